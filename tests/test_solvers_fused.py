"""Folded steps (pfode.solvers.fused) and the compiled sampler.

The unfolded steps are the reference (a callback makes the sampler run them): for every solver with folded steps,
on four paths and prediction types, both agree to 1e-12 in float64 (relative to the result's scale). The folded
steps are the fewest tensor operations of their algebra (counted on the plan), and ``Sampler(compile=True)`` traces
the whole loop as one graph without breaks and equals the eager sampler.
"""

from __future__ import annotations

import pytest
import torch
from test_solvers import MIXTURE, as_prediction

import pfode
from pfode import paths
from pfode.sample import _run_folded
from pfode.solvers.base import Evaluator
from pfode.solvers.fused import COMB, Builder, Conversions, lin

CASES = [
    ("vp-discrete", paths.VPDiscrete.ddpm, "eps"),
    ("edm", paths.EDM, "x0"),
    ("linear", paths.Linear, "velocity"),
    ("cosine", lambda: paths.get_path("cosine"), "v"),
]


def fusable():
    return [n for n in pfode.solvers.available() if pfode.solvers.get(n).fusable]


def test_the_folded_solvers():
    names = set(fusable())
    expected = {"ddim", "ddpm", "dpm1", "dpm2", "dpm3", "dpm-fast", "dpm++2s", "dpm++2m", "dpm++3m", "unipc", "deis",
                "usf", "ipndm", "lms", "euler", "heun", "midpoint", "rk4", "euler-maruyama", "dpm++2m-sde",
                "euler-ancestral"}
    assert names == expected
    # a subclass that changes the update but not the folded step runs unfolded
    assert not pfode.solvers.get("unipc-hb").fusable and not pfode.solvers.get("dpm++2m-hb").fusable


def _x(path, n=5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) * float(path.sigma(path.t_max))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_folded_steps_equal_the_reference_steps(case):
    _, make_path, prediction = case
    path = make_path()
    den = as_prediction(MIXTURE, path, prediction)
    x = _x(path)
    checked = 0
    for name in fusable():
        for nfe in (6, 9, 13):
            try:
                s = pfode.Sampler(den, nfe=nfe, solver=name)
            except ValueError:  # a budget this solver cannot spend exactly
                continue
            assert s.fused is not None
            folded = s(x, generator=torch.Generator().manual_seed(3))
            reference = s(x, callback=lambda info: None, generator=torch.Generator().manual_seed(3))
            # relative to the result's scale; the worst case (1.0e-12: dpm-fast on Linear) is the reference's own
            # rounding, whose eps_hat = (x - alpha x0_hat) / sigma cancels near zero noise
            err = float((folded - reference).abs().max() / reference.abs().max())
            assert err <= 2e-12, (name, nfe, err)
            assert not torch.equal(folded, x)
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
def test_folded_rk_in_path_time_with_a_full_last_step(solver):
    path = paths.Linear()
    den = as_prediction(MIXTURE, path, "velocity")
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = pfode.grid(path, 7, "uniform", t_start=1.0, t_end=0.0)
    s = pfode.Sampler(den, grid, pfode.solvers.get(solver, variable="t"))
    assert not s.plan[-1].zero and s.fused is not None
    torch.testing.assert_close(s(x), s(x, callback=lambda info: None), rtol=0, atol=1e-12)


def _tensor_ops(fs) -> int:
    """Tensor operations of a folded step besides its network calls: ``n`` terms cost ``n - 1`` adds, plus a
    multiply unless the first coefficient is 1."""
    return sum(len(op[1]) - 1 + (op[1][0][1] != 1.0) for op in fs.ops if op[0] == COMB)


def test_steps_are_the_fewest_tensor_operations():
    path = paths.VPDiscrete.ddpm()
    den = pfode.Denoiser(lambda x, t: 0.1 * x, path, prediction="eps", time_input="index")
    ops = {n: [_tensor_ops(fs) for fs in pfode.Sampler(den, nfe=10, solver=n).fused] for n in ("ddim", "dpm++2m")}
    # DDIM: x_next = a x + b out; the denoising step alpha x0_hat = a x + b out
    assert ops["ddim"] == [2] * 10
    # DPM-Solver++(2M) after its first step: x0_hat kept as x + r out (1), x_next = a x + b out + c kept (3)
    assert ops["dpm++2m"][1:-2] == [4] * 7
    # Heun in s on an eps network: eps_hat is the output, the stage input a x + b out (2), x_next from x and both
    # outputs (3); unfolded it was 14 operations
    heun = pfode.Sampler(den, pfode.grid(path, 5, "logsnr"), "heun", denoise=False).fused
    assert [_tensor_ops(fs) for fs in heun] == [5] * 5


def test_builder_merges_terms_and_drops_zeros():
    table = pfode.Sampler(pfode.Denoiser(lambda x, t: x, paths.EDM(), prediction="eps"), nfe=3, solver="ddim").table
    b = Builder(Conversions("eps", table), 0)
    out = b.eval(0, b.x)
    # eps prediction: eps_hat is the output alone, x0_hat = x - s out
    assert b.eps(0, b.x, out) == {out: 1.0}
    assert lin((1.0, {b.x: 1.0}), (-1.0, b.x0(0, b.x, out)), (-table[0].s, b.eps(0, b.x, out))) == {}
    assert b.comb({b.x: 1.0}) == b.x and len(b.ops) == 1  # a unit single term is the register itself
    kept = b.keep({b.x: 2.0, out: -8.0})
    (reg, scale), = kept.items()
    # stored scaled by its largest coefficient, the unit term first: one add, no multiply
    assert scale == -8.0 and reg == b.n - 1 and b.ops[-1] == (COMB, ((out, 1.0), (b.x, -0.25)))


def test_compiled_sampler_is_one_graph_and_equals_eager():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4)).double()

    def f(x, t):
        return net(torch.cat([x, t[:, None].to(x.dtype) * 1e-3], 1))

    den = pfode.Denoiser(f, paths.VPDiscrete.ddpm(), prediction="eps", time_input="index")
    x = torch.randn(3, 4, dtype=torch.float64)
    eager = pfode.Sampler(den, nfe=6, solver="dpm++2m")
    t_net = Evaluator.times(den, eager.table, x)[0]
    explained = torch._dynamo.explain(lambda u: _run_folded(eager.fused, den, u, t_net, None, None))(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    with torch.no_grad():
        compiled = pfode.Sampler(den, nfe=6, solver="dpm++2m", compile=True)
        torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(compiled(x + 1), eager(x + 1), rtol=0, atol=1e-12)  # replayed, not retraced
        with pytest.raises(ValueError, match="x_T has non-finite"):  # checked inside the graph
            compiled(torch.full_like(x, float("nan")))
    # torch.compile keeps at most 8 graphs per code object: every compiled loop has its own
    other = pfode.Sampler(den, nfe=7, solver="unipc", compile=True)
    with torch.no_grad():
        other(x, check_finite=False)
    codes = {f._torchdynamo_orig_callable.__code__ for s in (compiled, other) for f in s._compiled.values()}
    assert len(codes) == 2


def test_compile_errors():
    den = pfode.Denoiser(lambda x, t: x, paths.EDM(), prediction="eps")
    with pytest.raises(ValueError, match="compile"):
        pfode.Sampler(den, nfe=6, solver="dpm++2m", compile="fastest")
    with pytest.raises(TypeError, match="compile"):
        pfode.Sampler(den, nfe=6, solver="dpm++2m", compile=1)
    with pytest.raises(ValueError, match="no folded steps"):
        pfode.Sampler(den, nfe=6, solver="dpm++2m-hb", compile=True)
    with pytest.raises(ValueError, match="adaptive"):
        pfode.Sampler(den, solver="dopri5", compile=True)
    s = pfode.Sampler(den, nfe=6, solver="dpm++2m", compile=True)
    with pytest.raises(ValueError, match="callback"):
        s(torch.randn(2, 3), callback=lambda info: None)


def test_folded_usf_with_per_step_rules():
    """Tuned recipes' steps: per-step order, space and corrector (a first-order step between higher-order ones
    passes the kept values on)."""
    from pfode.solvers import USF, Rule

    path = paths.VPDiscrete.ddpm()
    den = as_prediction(MIXTURE, path, "eps")
    x = _x(path)
    rules = [Rule(2, "x0"), Rule(1, "x0"), Rule(3, "x0"), Rule(2, "eps", True), Rule(1, "x0"), Rule(4, "eps")]
    s = pfode.Sampler(den, pfode.grid(path, 6, "logsnr"), USF(rules=rules))
    assert s.fused is not None
    folded, reference = s(x), s(x, callback=lambda info: None)
    assert float((folded - reference).abs().max() / reference.abs().max()) <= 2e-12
