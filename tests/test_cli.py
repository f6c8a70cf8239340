"""The ``pfode`` command line, end to end through subprocesses, at tiny sizes.

Every subcommand runs once; bad arguments give exit status 2 (command line) or 1 (files, configurations,
existing outputs) and exactly one line ``pfode: error: ...`` on stderr, never a traceback.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from pfode import plots
from pfode.cli import main

# (pfode info's cache in a folder of its own, not the user's ~/.cache)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PFODE_CACHE_DIR": tempfile.mkdtemp()}

TINY = """\
data: {name: toy2d, kind: moons, n: 256, seed: 0}
model: {name: mlp, width: 16, depth: 1, time_dim: 8}
objective: {name: flow-matching, path: linear}
train: {iterations: 6, batch_size: 32, lr: 0.001, log_every: 2, ckpt_every: 3, sample_every: 3, sample_n: 64,
        sample_nfe: 2, device: cpu, tensorboard: false}
"""


def run(*args, cwd, script=False, module="pfode.cli"):
    cmd = [_script()] if script else [sys.executable, "-m", module]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _script():
    p = Path(sys.executable).parent / "pfode"
    return str(p) if p.exists() else shutil.which("pfode")


def ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pfode: error: ")
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def fails_in(capsys, code, argv, *words):
    """``main(argv)`` in this process: exit status ``code`` and one error line (checked like :func:`fails`)."""
    r = subprocess.CompletedProcess(argv, main(argv), *capsys.readouterr())
    return fails(r, code, *words)


def png_shape(path, kind):
    img = mpimg.imread(path)
    w, h = plots.SIZES[kind]
    assert img.shape[:2] == (round(h * plots.DPI), round(w * plots.DPI))
    return img


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny training run (6 iterations, checkpoints at 3 and 6), exported as a model pair."""
    d = tmp_path_factory.mktemp("train")
    (d / "tiny.yaml").write_text(TINY)
    out = ok(run("train", "tiny.yaml", "--out", "run", "--quiet", "--export", "model/tiny", cwd=d))
    assert "trained iterations 0..6" in out
    return d


def test_sample_without_arguments_uses_builtin_digits(tmp_path):
    out = ok(run("sample", cwd=tmp_path, script=_script() is not None))
    assert "builtin:digits" in out and "dpm++2m (10 NFE)" in out
    img = png_shape(tmp_path / "samples.png", "grid")
    assert img.std() > 0.05
    # an existing output is refused without --force, and left as it was
    before = (tmp_path / "samples.png").read_bytes()
    fails(run("sample", cwd=tmp_path), 1, "samples.png exists", "--force")
    assert (tmp_path / "samples.png").read_bytes() == before
    ok(run("sample", "--force", "--n", "4", "--nfe", "3", cwd=tmp_path))
    assert (tmp_path / "samples.png").read_bytes() != before


def test_sample_moons_scatter_npz_and_trajectories(tmp_path):
    ok(run("sample", "--model", "builtin:moons", "--n", "200", "--out", "moons.png", cwd=tmp_path))
    png_shape(tmp_path / "moons.png", "scatter")
    ok(run("sample", "--model", "builtin:moons", "--n", "50", "--solver", "unipc", "--out", "m.npz", cwd=tmp_path))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["samples"].shape == (50, 2) and int(z["nfe"]) == 10 and str(z["solver"]) == "unipc"
        assert np.isfinite(z["samples"]).all()
    ok(run("sample", "--model", "analytic:gmm", "--n", "40", "--trajectories", "--out", "t.png", cwd=tmp_path))
    png_shape(tmp_path / "t.png", "trajectories")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "moons.png", "t.png"]  # no temp files


def test_train_resume_and_sample_from_the_run(run_dir, capsys, monkeypatch):
    d = run_dir
    run_ = d / "run"
    assert (run_ / "checkpoints" / "latest.json").is_file()
    assert (run_ / "samples" / "step-00000003.png").is_file()  # periodic sample plots
    png_shape(run_ / "training_curves.png", "training")
    meta = json.loads((d / "model" / "tiny.json").read_text())
    assert meta["step"] == 6 and all(k.startswith("ema/") for k in meta["manifest"])
    # training again into the same folder needs --resume or --force
    fails(run("train", "tiny.yaml", "--out", "run", cwd=d), 1, "--resume", "--force")
    # resume from the stored configuration, with more iterations given as a flag
    out = ok(run("train", "--resume", "run", "--iterations", "8", "--quiet", cwd=d))
    assert "trained iterations 6..8" in out
    # a run folder and an exported model both load with --model
    ok(run("sample", "--model", "run", "--n", "30", "--nfe", "4", "--out", "a.png", cwd=d))
    png_shape(d / "a.png", "scatter")
    ok(run("sample", "--model", "model/tiny.safetensors", "--n", "30", "--nfe", "4", "--out", "b.npz", cwd=d))
    # --force starts over (in-process: the same main() as the script)
    monkeypatch.chdir(d)
    assert main(["train", "tiny.yaml", "--out", "run", "--force", "--quiet", "--iterations", "2"]) == 0
    assert "trained iterations 0..2" in capsys.readouterr().out
    assert sorted(p.name for p in (run_ / "checkpoints").glob("step-*.json")) == ["step-00000002.json"]
    # python -m pfode.train is pfode train
    out = ok(run("tiny.yaml", "--out", "run2", "--quiet", "--iterations", "1", cwd=d, module="pfode.train"))
    assert "trained iterations 0..1" in out and (d / "run2" / "checkpoints" / "latest.json").is_file()


def test_nll_invert_and_reflow(run_dir):
    d = run_dir
    out = ok(run("nll", "--model", "model/tiny.json", "--n", "8", "--rtol", "1e-3", "--atol", "1e-3", cwd=d))
    assert "log-likelihood" in out and "bits/dim" in out
    out = ok(run("invert", "--model", "model/tiny.json", "--n", "8", "--method", "bdia", cwd=d))
    err = float(out.split("relative error = ")[1].split(";")[0])
    assert err < 1e-8  # BDIA is exact up to float64 rounding
    out = ok(
        run(
            "reflow",
            "--teacher",
            "run/checkpoints",
            "--out",
            "reflow",
            "--pairs",
            "64",
            "--pair-batch",
            "32",
            "--solver",
            "euler",
            "--nfe",
            "4",
            "--iterations",
            "3",
            "--batch-size",
            "32",
            "--sample-every",
            "0",
            "--quiet",
            "--export",
            "student",
            cwd=d,
        )
    )
    assert "64 teacher pairs" in out
    assert json.loads((d / "reflow" / "pairs" / "index.json").read_text())["solver"] == "euler"
    assert (d / "student.safetensors").is_file() and "trained iterations 0..3" in out
    student = json.loads((d / "student.json").read_text())
    assert student["spec"]["objective"]["coupling"] == "reflow"


def test_nll_on_the_analytic_target_matches_the_exact_density(tmp_path):
    out = ok(run("nll", "--model", "analytic:gmm", "--n", "16", cwd=tmp_path))
    diff = float(out.split("mean |difference| ")[1].rstrip(")\n"))
    assert diff < 0.05


def test_nll_steps_are_grid_intervals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["nll", "--model", "analytic:gmm", "--n", "16", "--solver", "rk4", "--steps", "12"]) == 0
    out = capsys.readouterr().out
    assert "rk4 (12 steps)" in out and "NFE 48" in out  # 12 intervals of 4 evaluations
    assert float(out.split("mean |difference| ")[1].rstrip(")\n")) < 0.05


def test_bench_and_info(tmp_path):
    out = ok(
        run("bench", "--nfe", "5,10", "--n", "16", "--solvers", "ddim,dpm++2m,heun", "--json", "b.json", cwd=tmp_path)
    )
    assert "dpm++2m" in out and "NFE 10" in out
    png_shape(tmp_path / "bench.png", "nfe")
    table = json.loads((tmp_path / "b.json").read_text())
    assert table["rmse"]["dpm++2m"]["10"] < table["rmse"]["ddim"]["10"]
    assert table["rmse"]["heun"]["10"] is None  # heun cannot spend 10 evaluations
    fails(run("bench", "--nfe", "5", "--n", "4", cwd=tmp_path), 1, "exists")
    out = ok(run("info", cwd=tmp_path))
    for word in ("dpm++2m", "evals/step", "velocity", "builtin:digits", "extras"):
        assert word in out


def test_usage_errors(tmp_path, capsys, monkeypatch):
    fails(run("sample", "--solver", "nope", cwd=tmp_path), 2, "unknown solver 'nope'")
    # the rest in-process (same main(), same output; a subprocess each would cost a torch import)
    monkeypatch.chdir(tmp_path)
    fails_in(capsys, 2, ["sample", "--nfe", "0"], "--nfe")
    fails_in(capsys, 2, ["sample", "--solver", "heun", "--nfe", "10"], "nfe=10")
    fails_in(capsys, 2, ["sample", "--out", "x.jpg"], ".png or .npz")
    fails_in(capsys, 2, ["sample", "--bogus"], "unrecognized")
    fails_in(capsys, 2, ["nosuchcommand"])
    fails_in(capsys, 2, ["bench", "--nfe", "3,x"], "--nfe")
    fails_in(capsys, 2, ["invert", "--method", "bdia", "--solver", "dpm++2m"], "single-step")
    fails_in(capsys, 2, ["sample", "--model", "builtin:nope"], "builtin model")
    fails_in(capsys, 2, ["sample", "--model", "analytic:gmm", "--trajectories", "--out", "t.npz"], "trajectories")
    # one vocabulary: --steps counts grid intervals, --iterations optimizer steps
    for cmd in (["train", "x.yaml"], ["reflow"]):
        fails_in(capsys, 2, [*cmd, "--steps", "5"], "--steps is the number of grid intervals", "--iterations")
    fails_in(capsys, 2, ["nll", "--model", "analytic:gmm", "--solver", "heun"], "--steps N (grid intervals)")
    assert list(tmp_path.iterdir()) == []


def test_file_and_config_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.yaml").write_text("data: {name: digits\nmodel: [\n")
    fails(run("train", "bad.yaml", cwd=tmp_path), 1, "malformed YAML", "line")
    monkeypatch.chdir(tmp_path)
    fails_in(capsys, 1, ["sample", "--model", "missing.json"], "missing.json")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    fails_in(capsys, 1, ["sample", "--model", "pickle.safetensors"], "not a safetensors file")
    fails_in(capsys, 1, ["train", "nothere.yaml"], "nothere.yaml")
    (tmp_path / "bad.json").write_text('{"data": {"name": "digits"},}')
    fails_in(capsys, 1, ["train", "bad.json"], "malformed JSON", "line 1")
    (tmp_path / "key.yaml").write_text(TINY.replace("depth: 1", "depth: 1, dropout: 0.1"))
    fails_in(capsys, 1, ["train", "key.yaml"], "unknown key model.dropout")
    (tmp_path / "tkey.yaml").write_text(TINY.replace("lr: 0.001", "lr: 0.001, learning_rate: 1"))
    fails_in(capsys, 1, ["train", "tkey.yaml"], "train: unknown training options ['learning_rate']", "valid options")
    (tmp_path / "old.yaml").write_text(TINY.replace("iterations: 6", "steps: 6"))
    fails_in(capsys, 1, ["train", "old.yaml"], "train.steps was renamed to train.iterations")
    (tmp_path / "section.yaml").write_text(TINY + "optim: {lr: 1}\n")
    fails_in(capsys, 1, ["train", "section.yaml"], "unknown section 'optim'")
    (tmp_path / "ok.yaml").write_text(TINY)
    fails_in(capsys, 1, ["train", "ok.yaml", "--lr", "-1"], "lr=")
    fails_in(capsys, 1, ["train", "ok.yaml", "--set", "model.width=0"], "model", "width=0")
    fails_in(capsys, 1, ["train", "ok.yaml", "--set", "objective.time_sampler=nope"], "time_sampler")
    fails_in(capsys, 1, ["train", "ok.yaml", "--set", "data.kind=circles"], "data.kind")
    fails_in(capsys, 1, ["train", "--resume", "nowhere"], "no checkpoint to resume")
    fails_in(capsys, 1, ["nll", "--model", "analytic:gmm", "--data", "missing.npy"], "missing.npy")
    assert not (tmp_path / "runs").exists()  # nothing was created for the invalid runs


def test_yaml_aliases_are_refused_before_they_expand(tmp_path, capsys, monkeypatch):
    """A "billion laughs" config (nine levels of aliases, 10^9 leaves) is refused at the first alias."""
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (tmp_path / "laughs.yaml").write_text(TINY + "\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    fails_in(capsys, 1, ["train", "laughs.yaml"], "aliases (*a0) are not allowed", "line 7")
    # --set values are read with the same loader
    from pfode.io import yaml_load

    with pytest.raises(Exception, match="aliases"):
        yaml_load("[&x [1, 2], *x]")
    assert yaml_load("a: &x 1") == {"a": 1}  # an anchor alone is harmless


def test_verbose_shows_the_traceback(tmp_path):
    r = run("sample", "--model", "missing.json", "--verbose", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr and "pfode: error:" in r.stderr


def test_tune_then_sample_with_the_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ["--model", "analytic:gmm:4:3"]
    out = ok(run("tune", *model, "--nfe", "3", "--n", "8", "--held-out", "4", "--budget", "30", "--teacher", "ddim",
                 "--teacher-nfe", "40", "--quiet", "--out", "r.json", cwd=tmp_path))
    assert "untuned best" in out and "recipe" in out and "held-out" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema"] == "pfode.recipe" and d["meta"]["nfe"] == 3
    out = ok(run("sample", *model, "--recipe", "r.json", "--n", "16", "--out", "s.npz", cwd=tmp_path))
    assert "(3 NFE)" in out
    assert np.load(tmp_path / "s.npz")["samples"].shape == (16, 4)
    # errors: nothing written on failure
    fails_in(capsys, 2, ["tune", *model, "--nfe", "1", "--out", "x.json"], "--nfe 1")
    fails_in(capsys, 2, ["tune", *model, "--parts", "times,nope", "--out", "x.json"], "--parts")
    fails_in(capsys, 1, ["tune", *model, "--out", "r.json"], "exists")
    fails_in(capsys, 2, ["sample", *model, "--recipe", "r.json", "--nfe", "4"], "--recipe fixes")
    vp = ["sample", "--model", "analytic:gmm:4:3", "--path", "vp", "--recipe", "r.json"]
    fails_in(capsys, 1, vp, "tuned for the path")
    fails_in(capsys, 1, ["sample", "--model", "analytic:gmm:5:3", "--recipe", "r.json"], "shape")
    (tmp_path / "bad.json").write_text('{"schema": "pfode.recipe", "version": 7}')
    fails_in(capsys, 1, ["sample", *model, "--recipe", "bad.json"], "version=7")
    assert not (tmp_path / "x.json").exists()


def test_out_under_a_file_names_the_file(tmp_path, capsys, monkeypatch):
    """A parent of --out that is a file is named as such, with or without --force."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    for extra in ([], ["--force"]):
        fails_in(capsys, 1, ["sample", "--out", "f/s.png", *extra], "f is a file, not a folder")


# --- start-up, progress, dtype, README -----------------------------------------------------------------
HEAVY = ("torch", "matplotlib", "scipy", "sklearn", "safetensors", "diffusers", "PIL")


def _imported_after(code: str, env: dict | None = None) -> list[str]:
    """Top-level packages of HEAVY that ``code`` leaves in ``sys.modules`` (a fresh interpreter)."""
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    r = subprocess.run([sys.executable, "-c", probe], env=env or ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_version_and_help_import_no_heavy_module():
    """``import pfode``, ``pfode --version`` and ``pfode --help`` import neither torch nor any plotting, SciPy,
    scikit-learn, safetensors, diffusers or PIL module; ``pfode info`` needs torch only."""
    light = ["import pfode, pfode.cli", "from pfode.cli import main"]
    for argv in (["--version"], ["--help"], ["sample", "--help"]):
        light.append(f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert _imported_after("\n".join(light)) == []
    # info needs torch alone; a bare `import pfode` still gives every public name, pfode.sample stays the function
    code = (
        "import os, tempfile\nos.environ['PFODE_CACHE_DIR'] = tempfile.mkdtemp()\n"
        "from pfode.cli import main\nmain(['info'])\nimport pfode, pfode.likelihood, pfode.invert\n"
        "assert callable(pfode.sample) and callable(pfode.invert) and pfode.paths.VP and pfode.Sampler"
    )
    assert _imported_after(code) == ["torch"]


def test_info_is_cached_by_what_it_depends_on(tmp_path, monkeypatch):
    """A repeated ``pfode info`` prints the same report from its cache without importing torch; a cache whose key
    does not match (another pfode, torch or machine) is recomputed."""
    env = {**ENV, "PFODE_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "pfode.cli", "info"], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "dpm++2m" in first.stdout
    code = "import io, contextlib\nfrom pfode.cli import main\nbuf = io.StringIO()\n"
    code += "with contextlib.redirect_stdout(buf):\n    main(['info'])\nopen('out.txt', 'w').write(buf.getvalue())"
    assert _imported_after(code.replace("open('out.txt'", f"open({str(tmp_path / 'out.txt')!r}"), env) == []
    assert (tmp_path / "out.txt").read_text() == first.stdout
    stale = json.loads((tmp_path / "info.json").read_text())
    (tmp_path / "info.json").write_text(json.dumps({"key": "another", "lines": ["stale"]}))
    again = subprocess.run([sys.executable, "-m", "pfode.cli", "info"], env=env, capture_output=True, text=True)
    assert again.stdout == first.stdout and json.loads((tmp_path / "info.json").read_text()) == stale


def test_progress_lines_time_left_and_quiet():
    import io

    from pfode.cli.progress import Progress, duration

    assert [duration(s) for s in (0.4, 59, 61, 3599, 7322)] == ["0s", "59s", "1m01s", "59m59s", "2h02m"]
    now = [0.0]
    log = io.StringIO()  # not a terminal: one line every 30 s, none for jobs that end sooner
    with Progress("job", 4, "steps", stream=log, every=30, clock=lambda: now[0]) as p:
        p.update()
        assert log.getvalue() == ""
        now[0] = 30.0
        p.update()  # 2 of 4 steps in 30 s: 30 s left
        assert log.getvalue() == "job: 50% (2/4 steps), 30s elapsed, about 30s left\n"
        now[0] = 45.0
        p.update()  # 15 s after the last line: not yet
        now[0] = 90.0
        p.update()
    last = ["job: 100% (4/4 steps), 1m30s elapsed, about 0s left", "job: 4 steps done in 1m30s"]
    assert log.getvalue().splitlines()[1:] == last

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with Progress("job", 3, stream=tty, every=0, clock=lambda: now[0]) as p:
        p.update()
        p.update()
    assert tty.getvalue().startswith("\rjob  33% |######      ") and "\rjob  67% |#############" in tty.getvalue()
    assert tty.getvalue().endswith("\n") and tty.getvalue().rstrip().endswith("\rjob: done in 0s")
    quiet = Tty()
    with Progress("job", 3, stream=quiet, every=0, quiet=True) as p:
        p.update(3)
    assert quiet.getvalue() == ""


def test_sample_progress_dtype_and_new_folder(tmp_path, capsys, monkeypatch):
    """Progress lines on stderr (every step with PFODE_PROGRESS_EVERY=0), none with --quiet; --dtype reaches the
    network; an --out in a missing folder creates it and says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PFODE_PROGRESS_EVERY", "0")
    base = ["sample", "--model", "builtin:moons", "--n", "40", "--nfe", "4", "--batch-size", "20"]
    assert main([*base, "--out", "new/dir/a.npz"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "sample: 25% (2/8 steps)" in err[1] and "left" in err[1]  # 2 batches of 4 steps
    assert err[-2].startswith("sample: 8 steps done in")
    assert err[-1] == f"pfode: created the folder {Path('new/dir')} for --out"
    assert main([*base, "--out", "new/dir/b.npz", "--dtype", "float64", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # the folder exists now, and no progress
    assert main([*base, "--out", "new/dir/c.npz", "--dtype", "float16", "--quiet"]) == 0
    a, b, c = (np.load(tmp_path / "new" / "dir" / f"{k}.npz") for k in "abc")
    assert a["samples"].dtype == np.float32 and b["samples"].dtype == np.float64 and c["samples"].dtype == np.float32
    assert 0 < np.abs(b["samples"] - a["samples"]).max() < 1e-3  # the same sampler in another precision
    assert 0 < np.abs(c["samples"] - a["samples"]).max() < 0.1
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "a missing folder is created" in " ".join(capsys.readouterr().out.split())


def test_nll_reports_progress_inside_and_across_batches(tmp_path, capsys, monkeypatch):
    """nll's progress comes from the network's calls: it moves inside a batch and counts the batches."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PFODE_PROGRESS_EVERY", "0")
    argv = ["nll", "--model", "builtin:moons", "--n", "8", "--batch-size", "4", "--rtol", "1e-2", "--atol", "1e-2"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    first = [int(ln.split("%")[0].split()[-1]) for ln in err if "(0/2 batches)" in ln]
    second = [int(ln.split("%")[0].split()[-1]) for ln in err if "(1/2 batches)" in ln]
    assert first and second and 0 < max(first) <= 50 < max(second)
    assert err[-1].startswith("nll: 2 batches done in")


def test_bench_defaults_on_a_network(tmp_path, capsys, monkeypatch):
    """A network model gets the cheap defaults (16 samples, float32); the reference is reported with its NFE."""
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--model", "builtin:moons", "--nfe", "3,4", "--solvers", "ddim,heun", "--reference-tol", "1e-4"]
    assert main([*argv, "--out", "plots/b.png", "--json", "b.json", "--quiet"]) == 0
    out = capsys.readouterr()
    assert "16 samples in float32" in out.out and "tol 0.0001" in out.out
    table = json.loads((tmp_path / "b.json").read_text())
    assert table["n"] == 16 and table["dtype"] == "float32" and table["reference"]["nfe"] > 10
    assert table["rmse"]["heun"]["3"] is not None and table["rmse"]["heun"]["4"] is None
    assert (tmp_path / "plots" / "b.png").is_file() and "created the folder plots" in out.err


def test_readme_commands_run_in_order():
    """The README's command block, read top to bottom: no command writes an output an earlier one wrote (without
    --force), and every model, recipe or run a command reads was written before (or is builtin/analytic)."""
    import shlex

    from pfode.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("pfode ")]
    assert len(lines) >= 10
    parser = build_parser()
    written: set[str] = set()
    for ln in lines:
        a = parser.parse_args(shlex.split(ln, comments=True)[1:])
        reads = [getattr(a, "teacher" if a.command == "reflow" else "model", None)]
        reads += [getattr(a, "recipe", None), getattr(a, "resume", None)]
        for r in reads:
            if r and not r.startswith(("builtin:", "analytic:")):
                assert r in written, f"{ln!r} reads {r}, which no earlier command writes"
        if a.command == "train" and a.config:
            assert (root / a.config).is_file(), a.config
        outs = [getattr(a, "out", None), getattr(a, "json", None)]
        if a.command == "train" and a.resume is None and a.out is None:
            outs[0] = f"runs/{Path(a.config).stem}"
        for o in (o for o in outs if o):
            resumed = a.command == "train" and a.resume == o
            assert o not in written or a.force or resumed, f"{ln!r} writes {o} again without --force"
            written.add(o)


def test_sample_skip_sada(tmp_path, capsys):
    """--skip sada reaches the sampler: fewer evaluations than the grid's steps, reported in the summary line."""
    argv = ["sample", "--model", "builtin:moons", "--solver", "ddim", "--nfe", "30", "--n", "100", "--quiet"]
    assert main([*argv, "--skip", "sada", "--out", str(tmp_path / "a.npz")]) == 0
    used = int(capsys.readouterr().out.split("ddim (")[1].split(" NFE")[0])
    assert 1 < used < 30
    assert main([*argv, "--solver", "heun", "--nfe", "31", "--skip", "sada", "--out", str(tmp_path / "b.npz")]) == 1
    assert "skip='sada' needs a solver" in capsys.readouterr().err


BRIDGE = """\
data: {name: toy2d, kind: checkerboard, n: 256, seed: 0}
model: {name: mlp, width: 16, depth: 1, time_dim: 8}
objective: {name: interpolant, interpolant: linear, gamma: {name: sqrt}, field: both,
            source: {name: toy2d, kind: moons, n: 256, seed: 1}}
train: {iterations: 4, batch_size: 32, lr: 0.001, log_every: 2, ckpt_every: 4, sample_every: 0, device: cpu,
        tensorboard: false}
"""


def test_train_and_transport_data_to_data(tmp_path, monkeypatch, capsys):
    """`pfode train` a moons -> checkerboard interpolant, then `pfode sample --from toy2d:moons` transports with the
    ODE and the SDE; bad combinations get one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bridge.yaml").write_text(BRIDGE)
    assert main(["train", "bridge.yaml", "--out", "run", "--quiet"]) == 0
    assert main(["sample", "--model", "run", "--from", "toy2d:moons", "--n", "50", "--out", "a.npz", "--quiet"]) == 0
    z = np.load(tmp_path / "a.npz")
    assert z["samples"].shape == (50, 2) == z["source"].shape and np.isfinite(z["samples"]).all()
    assert not np.allclose(z["samples"], z["source"])
    args = ["sample", "--model", "run", "--from", "toy2d:moons", "--n", "50", "--eps", "0.5", "--solver", "euler"]
    assert main([*args, "--nfe", "4", "--out", "b.png", "--quiet"]) == 0 and (tmp_path / "b.png").exists()
    capsys.readouterr()
    fails_in(capsys, 2, ["sample", "--model", "builtin:moons", "--from", "toy2d:moons"], "interpolant model")
    fails_in(capsys, 2, ["sample", "--model", "run", "--from", "toy2d:moons", "--solver", "dpm++2m"], "euler")
    fails_in(capsys, 2, ["sample", "--model", "run", "--from", "x.txt", "--out", "c.png"], "toy2d:KIND")
    fails_in(capsys, 2, ["sample", "--eps", "1", "--out", "d.png"], "--eps")
    fails_in(capsys, 1, ["sample", "--model", "run", "--out", "e.png"], "interpolant", "--from DATA")


CTM_TINY = """\
data: {name: toy2d, kind: moons, n: 256, seed: 0}
model: {name: ctm-mlp, width: 16, depth: 1, time_dim: 8}
objective: {name: ctm, path: linear, teacher: {checkpoint: "builtin:moons"}, steps: 6, heun_steps: 1}
train: {iterations: 2, batch_size: 16, lr: 0.001, log_every: 0, ckpt_every: 2, sample_every: 0, device: cpu,
        tensorboard: false}
"""


def test_sample_a_ctm_model_by_jumps(tmp_path, monkeypatch, capsys):
    """A CTM checkpoint samples by --nfe jumps with --gamma; solver options are refused by name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ctm.yaml").write_text(CTM_TINY)
    assert main(["train", "ctm.yaml", "--out", "run", "--quiet"]) == 0
    for gamma in ("0", "0.5"):
        argv = ["sample", "--model", "run", "--nfe", "2", "--gamma", gamma, "--n", "20", "--out", f"g{gamma}.npz"]
        assert main([*argv, "--quiet"]) == 0
    a, b = np.load(tmp_path / "g0.npz")["samples"], np.load(tmp_path / "g0.5.npz")["samples"]
    assert a.shape == b.shape == (20, 2) and np.isfinite(a).all() and not np.allclose(a, b)
    capsys.readouterr()
    fails_in(capsys, 2, ["sample", "--model", "run", "--solver", "heun", "--out", "x.png"], "--solver", "jumps")
    fails_in(capsys, 2, ["sample", "--model", "run", "--gamma", "2", "--out", "x.png"], "--gamma")
    fails_in(capsys, 2, ["sample", "--model", "builtin:moons", "--gamma", "0.5", "--out", "x.png"], "CTM")
