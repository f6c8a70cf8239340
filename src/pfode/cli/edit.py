"""``pfode edit``: inpaint, denoise or super-resolve an image with a pfode model as the prior.

The input is an ``.npy`` array (one image ``[H, W]`` / ``[C, H, W]`` or a batch ``[N, C, H, W]`` in the model's
value range, ``[-1, 1]`` for the digits) or a PNG (grey levels mapped to ``[-1, 1]``). Without ``--simulate`` the
input is the *measurement*: for ``inpaint`` an image whose missing pixels are NaN (or a ``--mask`` file of observed
pixels), for ``denoise`` the noisy image, for ``superres`` the low-resolution image (the factor is the ratio of the
model's size to the input's). With ``--simulate`` the input is a clean image that is corrupted first (mask of
``--keep``, noise ``--noise``, ``--factor`` pooling), and the PSNR to it is reported.

Writes to ``--out DIR``: ``restored.npy`` (``[N, C, H, W]``), ``restored.png`` and ``before_after.png`` (the input
as measured, the restoration, and the clean image with ``--simulate``).
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath

from .common import CLIError, UsageError, model_options, nonneg_int, positive_int, resolve_model, say

HELP = "inpaint, denoise or super-resolve an image (.npy or .png) with the model as prior; write a before/after figure"

TASKS = ("inpaint", "denoise", "superres")
EDITORS = ("sdedit", "code")


def add_arguments(p):
    model_options(p)
    p.add_argument("--task", required=True, choices=TASKS, help="what to restore")
    p.add_argument("--input", required=True, metavar="FILE", help="an .npy array or a .png image")
    p.add_argument(
        "--method",
        default="flowchef",
        help="a pfode.inverse method (pfode info lists them; default flowchef), or sdedit/code for --task denoise",
    )
    p.add_argument("--nfe", type=positive_int, default=20, help="network evaluations per restoration (default 20)")
    p.add_argument("--noise", type=float, default=None, help="measurement noise std (default 0.2 for denoise, else 0)")
    p.add_argument("--keep", type=float, default=0.5, help="inpaint --simulate: fraction of pixels kept (default 0.5)")
    p.add_argument("--factor", type=positive_int, default=4, help="superres --simulate: pooling factor (default 4)")
    p.add_argument("--mask", default=None, metavar="FILE", help="inpaint: .npy of observed pixels (true = observed)")
    p.add_argument("--t0", type=float, default=0.4, help="sdedit/code: the editing time (default 0.4)")
    p.add_argument("--simulate", action="store_true", help="the input is clean: corrupt it first, report the PSNR")
    p.add_argument("--n", type=positive_int, default=1, help="restorations per input image (default 1)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out")


def _read(path: str, shape: tuple):
    """The input as a float32 tensor ``[N, C, h, w]`` (channels of the model, any h, w)."""
    import numpy as np
    import torch

    p = FsPath(path)
    if not p.is_file():
        raise CLIError(f"--input {path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise CLIError(f"--input {path}: not a plain numeric .npy array ({e})") from None
        if a.dtype.kind not in "fiub":
            raise CLIError(f"--input {path}: expected a numeric array, got dtype {a.dtype}")
        a = a.astype(np.float32)
    elif suffix == ".png":
        import matplotlib.image as mpimg

        try:
            a = mpimg.imread(p)
        except Exception as e:  # noqa: BLE001 - any unreadable image is a user error
            raise CLIError(f"--input {path}: cannot read the PNG ({e})") from None
        if a.ndim == 3:
            a = a[..., :3].mean(-1)
        a = a.astype(np.float32) * 2.0 - 1.0
    else:
        raise UsageError(f"--input {path}: give an .npy array or a .png image")
    x = torch.from_numpy(np.ascontiguousarray(a))
    c = shape[0]
    if x.dim() == 2:
        x = x[None, None].expand(1, c, *x.shape).clone()
    elif x.dim() == 3:
        x = x[None] if x.shape[0] == c else x[:, None]
    if x.dim() != 4 or x.shape[1] != c:
        raise CLIError(
            f"--input {path}: expected an image [H, W], [{c}, H, W] or a batch [N, {c}, H, W], got {tuple(a.shape)}"
        )
    if bool(torch.isinf(x).any()):
        raise CLIError(f"--input {path}: contains infinite values")
    return x


def _psnr(x, ref, span: float = 2.0):
    import torch

    mse = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10 * torch.log10(span**2 / mse.clamp_min(1e-12))


def _operator(args, x, shape, noise):
    """``(operator, y [N, m], shown [N, *shape], clean or None)`` for the task."""
    import torch

    from .. import inverse

    g = torch.Generator().manual_seed(args.seed)
    n = x.shape[0]
    if args.task == "superres":
        if args.simulate:
            if tuple(x.shape[1:]) != shape:
                raise CLIError(f"--simulate needs inputs of the model's shape {shape}, got {tuple(x.shape[1:])}")
            try:
                op = inverse.Downsample(shape, args.factor, noise=noise)
            except ValueError as e:
                raise UsageError(f"--factor {args.factor}: {e}") from None
            return op, op.measure(x, generator=g), None, x
        h, w = x.shape[-2:]
        if shape[-2] % h or shape[-1] % w or shape[-2] // h != shape[-1] // w or h >= shape[-2]:
            raise CLIError(
                f"--task superres: the input ({h}x{w}) must be smaller than the model's {shape[-2]}x{shape[-1]} "
                "by one integer factor"
            )
        if bool(torch.isnan(x).any()):
            raise CLIError("--input contains NaN values")
        op = inverse.Downsample(shape, shape[-2] // h, noise=noise)
        return op, x.reshape(n, -1), None, None
    if tuple(x.shape[1:]) != shape:
        raise CLIError(f"--input has images of shape {tuple(x.shape[1:])}; the model's are {shape}")
    if args.task == "denoise":
        op = inverse.Inpaint(torch.ones(shape, dtype=torch.bool), noise=noise)
        if bool(torch.isnan(x).any()):
            raise CLIError("--input contains NaN values (NaN marks missing pixels for --task inpaint only)")
        if args.simulate:
            return op, op.measure(x, generator=g), None, x
        return op, x.reshape(n, -1), None, None
    # inpaint
    if args.mask is not None:
        import numpy as np

        try:
            mask = torch.from_numpy(np.load(args.mask, allow_pickle=False)).to(torch.bool).reshape(shape)
        except (OSError, ValueError, RuntimeError) as e:
            raise CLIError(f"--mask {args.mask}: need an .npy of {shape} booleans ({e})") from None
    elif args.simulate:
        if args.keep <= 0 or args.keep > 1:
            raise UsageError(f"--keep {args.keep}: must be in (0, 1]")
        mask = inverse.Inpaint.random(shape, args.keep, generator=g).mask
    else:
        nan = torch.isnan(x)
        if not bool(nan.any()):
            raise CLIError("--task inpaint: mark missing pixels with NaN in an .npy, give --mask, or pass --simulate")
        if bool((nan != nan[:1]).any()):
            raise CLIError("--task inpaint: every image of the batch must miss the same pixels (or give --mask)")
        mask = ~nan[0]
    try:
        op = inverse.Inpaint(mask, noise=noise)
    except ValueError as e:
        raise CLIError(f"--task inpaint: {e}") from None
    clean = x if args.simulate else None
    src = torch.nan_to_num(x, nan=0.0)
    if bool(torch.isnan(op(src)).any()):
        raise CLIError("--input has NaN values at observed pixels")
    y = op.measure(src, generator=g) if args.simulate else op(src)
    return op, y, None, clean


def _shown(op, y, shape):
    """The measurement as an image at the model's resolution (missing pixels mid-grey, low-res upsampled)."""
    import torch

    from .. import inverse

    if isinstance(op, inverse.Downsample):
        f = op.factor
        lo = y.reshape(y.shape[0], shape[0], shape[1] // f, shape[2] // f)
        return lo.repeat_interleave(f, -2).repeat_interleave(f, -1)
    img = torch.zeros(y.shape[0], *shape, dtype=y.dtype)
    img.reshape(y.shape[0], -1)[:, op._idx] = y
    return img


def _figure(before, after, clean, path, title, force):
    from ..plots import _figure as figure
    from ..plots import image_grid, save_figure

    cols = [("input (measured)", before), ("restored", after)] + ([("clean", clean)] if clean is not None else [])
    fig = figure(3.0 * len(cols), 3.4)
    for i, (name, imgs) in enumerate(cols):
        ax = fig.add_subplot(1, len(cols), i + 1)
        grid = image_grid(imgs.float(), ncol=min(8, imgs.shape[0]))
        ax.imshow(
            grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, overwrite=force)


def run(args) -> int:
    import time

    import numpy as np
    import torch

    from .. import inverse
    from ..io import atomic_write
    from ..plots import sample_grid

    methods = inverse.available()
    if args.method in EDITORS:
        if args.task != "denoise":
            raise UsageError(f"--method {args.method} edits a guide image: use it with --task denoise")
    elif args.method not in methods:
        raise UsageError(f"unknown --method {args.method!r}; available: {', '.join(methods + list(EDITORS))}")
    if args.noise is not None and not (args.noise >= 0 and np.isfinite(args.noise)):
        raise UsageError(f"--noise {args.noise}: must be a finite number >= 0")
    out = FsPath(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    files = [out / "restored.npy", out / "restored.png", out / "before_after.png"]
    if not args.force:
        for f in files:
            if f.exists():
                raise CLIError(f"{f} exists; pass --force to overwrite it")
    if not FsPath(args.input).is_file():
        raise CLIError(f"--input {args.input}: no such file")
    m = resolve_model(args.model, args.path)
    if m.target is not None or len(m.data_shape) != 3:
        raise UsageError(f"pfode edit needs an image model (e.g. builtin:digits); {m.name} has samples {m.data_shape}")
    shape = tuple(m.data_shape)
    x = _read(args.input, shape)
    noise = args.noise if args.noise is not None else (0.2 if args.task == "denoise" else 0.0)
    op, y, _, clean = _operator(args, x.double(), shape, noise)
    y = y.to(m.dtype).repeat_interleave(args.n, 0)
    clean = clean.repeat_interleave(args.n, 0) if clean is not None else None
    g = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()
    if args.method in EDITORS:
        from .. import edit

        guide = y.reshape(y.shape[0], *shape)
        if not float(m.denoiser.path.t_min) <= args.t0 <= float(m.denoiser.path.t_max):
            raise UsageError(f"--t0 {args.t0}: must be in [{m.denoiser.path.t_min:g}, {m.denoiser.path.t_max:g}]")
        fn = edit.sdedit if args.method == "sdedit" else edit.code
        res = fn(m.denoiser, guide, args.t0, nfe=args.nfe, generator=g)
        restored, nfe = res.x.detach(), res.nfe
    else:
        res = inverse.solve(m.denoiser, y, op, method=args.method, nfe=args.nfe, generator=g)
        restored, nfe = res.x, res.nfe
    dt = time.perf_counter() - t_start
    restored = restored.float().clamp(-1.0, 1.0)
    shown = _shown(op, y.double(), shape).float()
    make = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if make:
        print(f"pfode: created the folder {out} for --out", file=os.sys.stderr, flush=True)
    atomic_write(files[0], lambda f: np.save(f, restored.numpy()))
    sample_grid(restored, files[1], title=f"{args.task}: {args.method}, {nfe} NFE", overwrite=True)
    title = f"{args.task} with {args.method}, {nfe} NFE, noise {noise:g}"
    _figure(shown, restored, clean.float() if clean is not None else None, files[2], title, True)
    resid = float(((op(restored.double()) - y.double()) ** 2).mean().sqrt())
    say(f"model {m.name}; {args.task} of {x.shape[0]} image(s) x {args.n} with {args.method}: {nfe} NFE, {dt:.2f} s")
    say(f"measurement residual (rms) {resid:.4f} (noise {noise:g})")
    if clean is not None:
        say(
            f"PSNR to the clean input: {float(_psnr(restored.double(), clean).mean()):.2f} dB "
            f"(measured: {float(_psnr(shown.double(), clean).mean()):.2f} dB)"
        )
    say(f"restored -> {files[0]}, {files[1]}; before/after -> {files[2]}")
    return 0
