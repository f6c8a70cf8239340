"""pfode.integrations.diffusers against real diffusers schedulers, models and pipelines (offline, tiny)."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import pfode  # noqa: E402
from pfode.engine import drive  # noqa: E402
from pfode.integrations import diffusers as pfd  # noqa: E402
from pfode.paths import Linear, VPDiscrete  # noqa: E402
from pfode.solvers.base import Evaluator, Table  # noqa: E402

from diffusers import (  # noqa: E402  isort: skip
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest and keeps timings stable on shared machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _unet(out_channels=3, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _run_scheduler(sched, model, x, steps, **cond):
    """The loop every diffusers pipeline runs."""
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t, **cond).sample, t, x).prev_sample
    return x


class _Recorder:
    """Wraps a scheduler's step to keep the last prev_sample (pipelines clamp their final images)."""

    def __init__(self, sched):
        self.sched, self.step, self.last, self.calls = sched, sched.step, None, 0
        sched.step = self

    def __call__(self, *args, **kwargs):
        out = self.step(*args, **kwargs)
        self.last = out.prev_sample if not isinstance(out, tuple) else out[0]
        self.calls += 1
        return out


# -- config -> path ----------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_betas_reproduce_diffusers_exactly(schedule):
    ref = DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    betas = pfd.betas_from_config(ref.config)
    assert torch.equal(betas, ref.betas)
    spec = pfd.path_from_config(ref.config)
    assert isinstance(spec.path, VPDiscrete) and spec.time_input == "index" and spec.prediction == "eps"
    t = spec.t_of_timestep(torch.arange(1000))
    assert torch.allclose(spec.path.alpha(t) ** 2, ref.alphas_cumprod.double(), rtol=1e-5, atol=0)
    assert torch.allclose(spec.timestep_of_t(t), torch.arange(1000).double())


def test_trained_betas_and_prediction_types():
    b = torch.linspace(1e-4, 0.02, 50).tolist()
    spec = pfd.path_from_config(
        {"num_train_timesteps": 50, "trained_betas": b, "prediction_type": "v_prediction"}
    )
    assert spec.prediction == "v" and spec.path.n == 50
    assert torch.equal(
        pfd.betas_from_config(DDPMScheduler(num_train_timesteps=50, trained_betas=b).config),
        DDPMScheduler(num_train_timesteps=50, trained_betas=b).betas,
    )
    for pt, ours in pfd.PREDICTION_TYPES.items():
        assert pfd.path_from_config(DDIMScheduler(prediction_type=pt).config).prediction == ours


def test_flow_configs():
    spec = pfd.path_from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert isinstance(spec.path, Linear) and spec.prediction == "velocity" and spec.family == "flow"
    assert float(spec.time_input(torch.tensor(0.25))) == 250.0
    assert (
        spec.shift == 3.0 and abs(spec.t_last - FlowMatchEulerDiscreteScheduler(shift=3.0).sigma_min) < 1e-6
    )
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=2.0, prediction_type="flow_prediction")
    spec = pfd.path_from_config(dpm.config)
    assert spec.family == "flow" and spec.shift == 2.0


@pytest.mark.parametrize(
    "config, key, value",
    [
        ({"beta_schedule": "sigmoid"}, "beta_schedule", "squaredcos_cap_v2"),
        ({"variance_type": "learned_range"}, "variance_type", "fixed_small"),
        ({"variance_type": "learned"}, "variance_type", "fixed_small"),
        ({"variance_type": "weird"}, "variance_type", "fixed_large"),
        ({"prediction_type": "noise"}, "prediction_type", "v_prediction"),
        ({"timestep_type": "weird"}, "timestep_type", "continuous"),
        ({"_class_name": "EDMEulerScheduler", "sigma_data": 0.5}, "_class_name", "flow-matching"),
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "time_shift_type": "cubic"},
            "time_shift_type",
            "linear",
        ),
    ],
)
def test_unsupported_configs_name_key_and_values(config, key, value):
    with pytest.raises(ValueError) as e:
        pfd.path_from_config(config)
    assert key in str(e.value) and value in str(e.value)


def test_learned_variance_is_accepted_on_request():
    spec = pfd.path_from_config({"variance_type": "learned_range"}, learned_variance="drop")
    assert spec.learned_variance and spec.prediction == "eps"


# -- models -> Denoiser ------------------------------------------------------------------------------
def test_denoiser_on_unet2d(unet, noise):
    cfg = DDPMScheduler(prediction_type="v_prediction").config
    den = pfd.denoiser(unet, cfg)
    with torch.no_grad():
        x0, eps = den(noise, 0.5)
        v = unet(noise, torch.tensor([499.0, 499.0])).sample
    a, s = float(den.path.alpha(0.5)), float(den.path.sigma(0.5))
    assert torch.allclose(x0, a * noise - s * v, atol=1e-5)
    assert torch.allclose(eps, s * noise + a * v, atol=1e-5)


def test_denoiser_on_conditional_unet():
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    ).eval()
    cfg = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    ).config
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ehs = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    ref = _run_scheduler(DDIMScheduler.from_config(cfg), model, x, 6, encoder_hidden_states=ehs)
    sched = DDIMScheduler.from_config(cfg)
    sched.set_timesteps(6)
    with torch.no_grad():
        out = pfode.sample(
            pfd.denoiser(model, cfg),
            x,
            pfd.grid_from_timesteps(sched.timesteps, cfg),
            "ddim",
            cond={"encoder_hidden_states": ehs},
        )
    assert _rel(out, ref) < 1e-4
    with torch.no_grad():  # the conditioning matters
        other = pfode.sample(
            pfd.denoiser(model, cfg),
            x,
            pfd.grid_from_timesteps(sched.timesteps, cfg),
            "ddim",
            cond={"encoder_hidden_states": -ehs},
        )
    assert _rel(other, ref) > 1e-3


def test_learned_variance_unet_uses_first_channels(noise):
    model = _unet(out_channels=6)
    cfg = DDPMScheduler(variance_type="learned_range").config
    den = pfd.denoiser(model, cfg)
    with torch.no_grad():
        x0, eps = den(noise, 0.3)
        full = model(noise, torch.full((2,), 299.0)).sample
    assert torch.allclose(eps, full[:, :3], atol=1e-6)
    # and in a pipeline
    pipe = DDPMPipeline(unet=model, scheduler=DDPMScheduler(variance_type="learned_range"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pfd.PFODEScheduler.from_config(
        pipe.scheduler.config, solver="dpm++2m", spacing="logsnr", clip_sample=False
    )
    rec = _Recorder(pipe.scheduler)
    pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="pt")
    x = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    g = pfode.grid(den.path, 3, t_end=den.path.t_min)
    with torch.no_grad():
        assert _rel(rec.last, pfode.sample(den, x, g, "dpm++2m")) < 1e-6


def test_mismatched_output_channels_fail(noise):
    den = pfd.denoiser(_unet(out_channels=4), DDPMScheduler().config)
    with pytest.raises(ValueError, match="2C"), torch.no_grad():
        den(noise, 0.5)


# -- agreement with diffusers' samplers ------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(
    "scheduler_cls, solver, options",
    [(DDIMScheduler, "ddim", {"clip_sample": False}), (DPMSolverMultistepScheduler, "dpm++2m", {})],
)
def test_agrees_with_diffusers(unet, noise, schedule, prediction, scheduler_cls, solver, options):
    sched = scheduler_cls(beta_schedule=schedule, prediction_type=prediction, **options)
    ref = _run_scheduler(sched, unet, noise, 10)
    g, zero = pfd.grid_from_scheduler(sched)
    assert zero
    with torch.no_grad():
        out = pfode.sample(pfd.denoiser(unet, sched.config), noise, g, solver, denoise=zero)
    assert _rel(out, ref) < 1e-4
    if schedule != "linear":
        return
    # the same inside PFODEScheduler, on the diffusers scheduler's own timesteps
    ours = pfd.PFODEScheduler.from_config(sched.config, solver=solver, spacing=scheduler_cls.__name__)
    assert _rel(_run_scheduler(ours, unet, noise, 10), out) < 1e-6
    assert torch.equal(ours.timesteps, sched.timesteps)


def test_ddim_without_alpha_one(unet, noise):
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    ref = _run_scheduler(sched, unet, noise, 8)
    g, zero = pfd.grid_from_scheduler(sched)
    assert not zero and float(g[-1]) == 1e-3
    with torch.no_grad():
        out = pfode.sample(pfd.denoiser(unet, sched.config), noise, g, "ddim", denoise=False)
    assert _rel(out, ref) < 1e-4


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler_agreement(shift):
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
    ).eval()
    cond = {
        "encoder_hidden_states": torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4)),
        "pooled_projections": torch.randn(2, 8, generator=torch.Generator().manual_seed(5)),
    }
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))

    def call(y, t, **c):
        return model(y, timestep=t.expand(y.shape[0]), **c)

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref = _run_scheduler(sched, call, x, 8, **cond)
    g, zero = pfd.grid_from_scheduler(sched)
    euler_t = pfode.solvers.get("euler", variable="t")
    with torch.no_grad():
        out = pfode.sample(pfd.denoiser(model, sched.config), x, g, euler_t, denoise=zero, cond=cond)
    assert _rel(out, ref) < 1e-4
    ours = pfd.PFODEScheduler.from_config(
        sched.config, solver="euler", solver_options={"variable": "t"}, spacing="linspace"
    )
    assert ours.config.family == "flow"
    assert _rel(_run_scheduler(ours, call, x, 8, **cond), ref) < 1e-4
    # any pfode solver runs on the flow model through the scheduler
    uni = pfd.PFODEScheduler.from_config(sched.config, solver="unipc")
    out = _run_scheduler(uni, call, x, 6, **cond)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


# -- PFODEScheduler inside pipelines -----------------------------------------------------------------
def test_ddpm_pipeline_with_pfode_scheduler(unet):
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="v_prediction"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pfd.PFODEScheduler.from_config(
        pipe.scheduler.config, solver="unipc", spacing="logsnr", clip_sample=False
    )
    assert (
        isinstance(pipe.scheduler, pfd.PFODEScheduler)
        and pipe.scheduler.config.prediction_type == "v_prediction"
    )
    rec = _Recorder(pipe.scheduler)
    den = pfd.denoiser(unet, pipe.scheduler.config)
    # reuse with other batch sizes and step counts: no state leaks between runs
    for batch, steps in [(2, 8), (3, 5), (2, 8)]:
        images = pipe(
            batch_size=batch,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=steps,
            output_type="pt",
        ).images
        assert images.shape == (batch, 3, 8, 8) and rec.calls == steps
        rec.calls = 0
        x = randn_tensor((batch, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = pfode.sample(
                den, x, pfode.grid(den.path, steps - 1, "logsnr", t_end=den.path.t_min), "unipc"
            )
        assert _rel(rec.last, ref) < 1e-6


def test_ddim_pipeline_matches_diffusers_ddim(unet):
    sched = DDIMScheduler(clip_sample=False, prediction_type="epsilon")
    pipe = DDIMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    rec = _Recorder(pipe.scheduler)
    ref_img = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="pt"
    ).images
    ref = rec.last
    pipe.scheduler = pfd.PFODEScheduler.from_config(
        pipe.scheduler.config, solver="ddim", spacing="DDIMScheduler"
    )
    rec = _Recorder(pipe.scheduler)
    img = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="pt"
    ).images
    assert _rel(rec.last, ref) < 1e-4 and torch.allclose(img, ref_img, atol=1e-4)


@pytest.mark.parametrize("solver", ["heun", "dpm++2s", "dpm3", "rk4", "dpm-2", "evodiff", "dpm++2m-hb", "ghvb", "lms"])
def test_multi_evaluation_solvers_in_pipeline(unet, solver):
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="v_prediction"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pfd.PFODEScheduler.from_config(
        pipe.scheduler.config, solver=solver, spacing="karras", clip_sample=False
    )
    rec = _Recorder(pipe.scheduler)
    pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="pt")
    s = pfode.solvers.get(solver)
    assert pipe.scheduler.order == s.evals_per_step
    assert rec.calls == len(pipe.scheduler.timesteps) == s.evals(4, True)
    den = pfd.denoiser(unet, pipe.scheduler.config)
    x = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pfode.sample(
            den, x, pfode.grid(den.path, 4, "karras", t_start=1.0, t_end=den.path.t_min), solver
        )
    # RK's first stage evaluates at x / alpha * alpha, one rounding away from the state the pipeline sampled
    assert _rel(rec.last, ref) < 1e-5


def test_stochastic_solver_is_reproducible(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pfd.PFODEScheduler.from_config(pipe.scheduler.config, solver="ddpm", spacing="uniform")
    a = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="pt"
    ).images
    b = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="pt"
    ).images
    c = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(4), num_inference_steps=4, output_type="pt"
    ).images
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("solver", ["pc-langevin", "pc-lml"])
def test_corrector_solvers_in_pipeline(unet, solver):
    """A predictor-corrector solver drives a pipeline: each corrector move is one more UNet call (the scheduler's
    order), the result is reproducible from the pipeline's generator, and the moves change it (not vacuous)."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    runs = {}
    for name in (solver, "euler-maruyama"):
        pipe.scheduler = pfd.PFODEScheduler.from_config(pipe.scheduler.config, solver=name, spacing="uniform")
        rec = _Recorder(pipe.scheduler)
        imgs = [
            pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=4,
                 output_type="pt").images
            for seed in (3, 3)
        ]
        s = pfode.solvers.get(name)
        assert pipe.scheduler.order == s.evals_per_step
        assert rec.calls == 2 * len(pipe.scheduler.timesteps) == 2 * s.evals(3, True), (name, rec.calls)  # 2 runs
        assert torch.equal(imgs[0], imgs[1]) and bool(torch.isfinite(rec.last).all())
        runs[name] = rec.last
    assert pfode.solvers.get(solver).evals_per_step == 2
    assert _rel(runs[solver], runs["euler-maruyama"]) > 1e-3


# -- PFODEScheduler state handling -------------------------------------------------------------------
def test_scheduler_restarts_and_rejects_out_of_order_calls(unet, noise):
    sched = pfd.PFODEScheduler.from_config(DDPMScheduler().config, solver="dpm++3m")
    full = _run_scheduler(sched, unet, noise, 6)
    # abandon a run halfway, then loop again without set_timesteps (other batch size): a fresh run
    with torch.no_grad():
        x = noise
        for t in sched.timesteps[:3]:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        y = torch.cat([noise, noise[:1]])
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample
    assert _rel(y[:2], full) < 1e-6
    # out-of-order timestep and a batch change mid-run are errors
    with torch.no_grad():
        t0, t1 = sched.timesteps[0], sched.timesteps[1]
        x = sched.step(unet(noise, t0).sample, t0, noise).prev_sample
        with pytest.raises(ValueError, match="expected"):
            sched.step(unet(x, sched.timesteps[3]).sample, sched.timesteps[3], x)
        with pytest.raises(ValueError, match="batch"):
            sched.step(unet(x[:1], t1).sample, t1, x[:1])
    with pytest.raises(ValueError, match="set_timesteps"):
        pfd.PFODEScheduler().step(noise, 999, noise)


def test_scheduler_follows_edited_latents(unet, noise):
    """Pipelines may edit latents between steps (inpainting): the edited sample is the state."""
    sched = pfd.PFODEScheduler(solver="dpm++2m")
    sched.set_timesteps(5)
    with torch.no_grad():
        x = noise
        for i, t in enumerate(sched.timesteps):
            if i == 2:
                x = x * 0.5
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        # the same by hand with pfode's solver API
        den = pfd.denoiser(unet, sched.config)
        table = Table(den.path, pfode.grid(den.path, 4, t_end=den.path.t_min), True)
        solver = pfode.solvers.get("dpm++2m")
        ev, y, hist = Evaluator(den, table, noise, None), noise, None
        for st in solver.plan(table):
            if st.i == 2:
                y = y * 0.5
            y, hist, _ = drive(solver.program(y, hist, st), ev)
    assert _rel(x, y) < 1e-6


def test_begin_index_restarts_from_a_grid_point(unet, noise):
    sched = pfd.PFODEScheduler(solver="dpm++2m", spacing="uniform")
    sched.set_timesteps(8)
    sched.set_begin_index(3)
    den = pfd.denoiser(unet, sched.config)
    t = den.path.t_of_index(sched.timesteps[3].double())
    x = pfd.PFODEScheduler().add_noise(noise, noise.flip(0), sched.timesteps[3])
    with torch.no_grad():
        for ts in sched.timesteps[3:]:
            x = sched.step(unet(x, ts).sample, ts, x).prev_sample
        start = pfd.PFODEScheduler().add_noise(noise, noise.flip(0), sched.timesteps[3])
        g = pfd.grid_from_timesteps(sched.timesteps[3:], sched.config)
        ref = pfode.sample(den, start, g, "dpm++2m")
    assert float(g[0]) == float(t) and _rel(x, ref) < 1e-6
    with pytest.raises(ValueError, match="begin_index"):
        pfd.PFODEScheduler(solver="heun").set_timesteps(4).set_begin_index(1)


def test_add_noise_and_config_round_trip(tmp_path):
    ref = DDPMScheduler(beta_schedule="scaled_linear")
    ours = pfd.PFODEScheduler.from_config(ref.config, solver="deis", solver_options={"order": 2})
    x0 = torch.randn(3, 3, 4, 4)
    eps = torch.randn(3, 3, 4, 4)
    ts = torch.tensor([0, 500, 999])
    assert torch.allclose(ours.add_noise(x0, eps, ts), ref.add_noise(x0, eps, ts), atol=1e-5)
    assert torch.allclose(ours.get_velocity(x0, eps, ts), ref.get_velocity(x0, eps, ts), atol=1e-5)
    assert ours.scale_model_input(x0, 3) is x0 and ours.init_noise_sigma == 1.0
    ours.save_pretrained(tmp_path)
    back = pfd.PFODEScheduler.from_pretrained(tmp_path)
    assert back.config.solver == "deis" and back.config.solver_options == {"order": 2}
    assert back.solver.order == 2 and back.config.beta_schedule == "scaled_linear"
    assert torch.equal(
        DDIMScheduler.from_config(back.config).betas, DDIMScheduler.from_config(ref.config).betas
    )


def test_scheduler_bad_options():
    with pytest.raises(ValueError, match="adaptive"):
        pfd.PFODEScheduler(solver="dopri5")
    with pytest.raises(ValueError, match="spacing"):
        pfd.PFODEScheduler(spacing="cosine")
    with pytest.raises(ValueError, match="solver"):
        pfd.PFODEScheduler(solver="nope")
    with pytest.raises(ValueError, match="beta_schedule"):
        pfd.PFODEScheduler.from_config(DDPMScheduler(beta_schedule="sigmoid").config)


@pytest.mark.parametrize("steps", [10, 20])
def test_dpmsolver_sigma_min_final_matches_lower_order_final(steps):
    """diffusers' final_sigmas_type="sigma_min" with lower_order_final: the last step is first order below 15."""
    from diffusers import DPMSolverMultistepScheduler

    unet = _unet()
    sch = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, prediction_type="v_prediction", final_sigmas_type="sigma_min", solver_order=2
    )
    sch.set_timesteps(steps)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    with torch.no_grad():
        for t in sch.timesteps:
            y = sch.step(unet(y, t).sample, t, y).prev_sample
        grid, denoise = pfd.grid_from_scheduler(sch)
        z = pfode.sample(pfd.denoiser(unet, sch.config), x, grid, "dpm++2m", denoise=denoise)
    assert not denoise
    assert float((z - y).norm() / y.norm()) < 1e-4


def _recipe_for(den, skip: bool):
    """A hand-built recipe for ``den``'s path (tuning is tested in test_tuning.py)."""
    from pfode.solvers import Rule
    from pfode.tuning import GaussianSkip, Recipe

    path = den.path
    times = tuple(pfode.grid(path, 3, "logsnr", t_start=0.6 if skip else path.t_max, t_end=0.05).tolist())
    g = GaussianSkip.from_samples(torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5, rank=8)
    return Recipe(times=times, rules=(Rule(1), Rule(2, "eps"), Rule(2, "x0", True)), path=path.spec(),
                  shape=(3, 8, 8), t_start=path.t_max if skip else None, skip=g if skip else None)


def test_recipe_in_the_scheduler_and_pipelines(unet, noise, tmp_path):
    cfg = DDPMScheduler(prediction_type="epsilon", clip_sample=False).config
    den = pfd.denoiser(unet, cfg)
    for skip in (False, True):
        r = _recipe_for(den, skip)
        with torch.no_grad():
            ref = pfode.sample(den, noise, r)
        sched = pfd.PFODEScheduler.from_config(cfg, recipe=r)
        sched.set_timesteps()
        assert len(sched.timesteps) == r.nfe
        x = noise
        with torch.no_grad():  # the loop of pipelines that call scale_model_input (Stable Diffusion)
            for t in sched.timesteps:
                x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
        assert _rel(x, ref) < 1e-6
        # the config stays JSON and brings the recipe back
        sched.save_config(tmp_path / f"s{skip}")
        again = pfd.PFODEScheduler.from_config(pfd.PFODEScheduler.load_config(tmp_path / f"s{skip}"))
        assert again._recipe.times == r.times
        with pytest.raises(ValueError, match="recipe has 3 steps"):
            sched.set_timesteps(5)
    # DDPMPipeline does not call scale_model_input: fine without an analytic segment, a clear error with one
    pipe = DDPMPipeline(unet=unet, scheduler=pfd.PFODEScheduler.from_config(cfg, recipe=_recipe_for(den, False)))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=2, num_inference_steps=3, output_type="pt").images.shape == (2, 3, 8, 8)
    pipe.scheduler = pfd.PFODEScheduler.from_config(cfg, recipe=_recipe_for(den, True))
    with pytest.raises(ValueError, match="scale_model_input"):
        pipe(batch_size=2, num_inference_steps=3, output_type="pt")
    # another path is refused
    with pytest.raises(ValueError, match="tuned for the path"):
        cos = DDPMScheduler(beta_schedule="squaredcos_cap_v2").config
        pfd.PFODEScheduler.from_config(cos, recipe=_recipe_for(den, False))


def test_schedule_attributes_pipelines_read():
    """betas, alphas, alphas_cumprod, final_alpha_cumprod, sigma_min and sigma_max as diffusers has them."""
    for schedule in SCHEDULES:
        ref = DDPMScheduler(beta_schedule=schedule)
        ours = pfd.PFODEScheduler.from_config(ref.config)
        assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas, ref.alphas)
        assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-6, atol=0)
        assert float(ours.final_alpha_cumprod) == 1.0
        k = diffusers.EulerDiscreteScheduler.from_config(ref.config)  # sigma_min/max live on sigma schedulers
        assert ours.sigma_min == pytest.approx(float(k.sigmas[-2]), rel=1e-6)
        assert ours.sigma_max == pytest.approx(float(k.sigmas[0]), rel=1e-6)
    flow = pfd.PFODEScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert flow.sigma_max == 1.0 and 0 < flow.sigma_min < 0.01
    with pytest.raises(AttributeError, match="betas"):  # not a DDPM-style schedule
        _ = flow.betas


# -- PFODEScheduler as a drop-in for the scheduler it replaces ------------------------------------------
# A tamed model: the exact eps (or v) of Gaussian data N(mu, c^2 I) plus a small fixed nonlinear term, at any
# (fractional) timestep. Samplers then produce unsaturated samples that depend on every step, so agreement to
# 1e-5 is a real check; different samplers on the same grid differ by far more (checked below).
class _Tamed:
    def __init__(self, alphas_cumprod=None, pred="epsilon", mu=0.3, c=0.5, flow=False, continuous=False):
        ac = alphas_cumprod if alphas_cumprod is not None else torch.ones(2)
        self.lac = torch.log(torch.clamp(torch.as_tensor(ac).double(), min=2.0**-24))
        self.pred, self.mu, self.c, self.flow, self.continuous = pred, mu, c, flow, continuous
        self.w = torch.randn(4, 4, generator=torch.Generator().manual_seed(7)) / 2

    def coefficients(self, t: float) -> tuple[float, float]:
        if self.flow:
            s = t / 1000.0
            return 1.0 - s, s
        if self.continuous:
            a2 = 1.0 / (1.0 + math.exp(8.0 * t))
        else:
            i = min(max(int(math.floor(t)), 0), self.lac.numel() - 2)
            a2 = math.exp(float(self.lac[i]) * (1 - (t - i)) + float(self.lac[i + 1]) * (t - i))
        return a2**0.5, (1 - a2) ** 0.5

    def __call__(self, x, t):
        a, s = self.coefficients(float(torch.as_tensor(t).flatten()[0]))
        xd = x.double()
        eps = s * (xd - a * self.mu) / (a * a * self.c**2 + s * s)
        eps = eps + 1e-2 * torch.tanh(torch.einsum("ij,bj...->bi...", self.w.double(), xd))
        if self.pred == "epsilon":
            return eps.to(x.dtype)
        x0 = (xd - s * eps) / a if a > 0 else self.mu + 0 * xd
        return ((eps - x0) if self.flow else (a * eps - s * x0)).to(x.dtype)


def _loop(sched, model, steps, x, seed=None, start=0, **kw):
    """The pipeline loop (latents * init_noise_sigma, scale_model_input, model, step) from timesteps[start]."""
    sched.set_timesteps(steps, **kw)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    for t in sched.timesteps[start:]:
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        kw = {"generator": gen} if gen is not None and "generator" in inspect.signature(sched.step).parameters else {}
        x = sched.step(model(inp, t), t, x, **kw).prev_sample
    return x


def _x(seed=1):
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(seed))


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DROP_IN = [
    # (diffusers scheduler, pfode solver, solver options, data mean); the model predicts the config's prediction_type
    (diffusers.DDIMScheduler(clip_sample=False), "ddim", {}, 0.3),
    (diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), "ddim", {}, 0.3),
    # DDIMScheduler's steps land at t - N // n, not at the next "linspace" timestep: followed too
    (diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="linspace", set_alpha_to_one=False), "ddim", {}, 0.3),
    (diffusers.DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=False, clip_sample=False), "ddim", {}, 0.3),
    (diffusers.DDIMScheduler(clip_sample=True), "ddim", {}, 1.5),  # clipping active (data beyond 1)
    (diffusers.DDIMScheduler(thresholding=True, sample_max_value=1.2, prediction_type="v_prediction"), "ddim", {}, 1.5),
    (diffusers.DDPMScheduler(clip_sample=True), "ddpm", {}, 1.5),  # stochastic: the same noise
    (diffusers.DPMSolverMultistepScheduler(timestep_spacing="leading", steps_offset=1), "dpm++2m", {}, 0.3),
    (diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, prediction_type="v_prediction"), "dpm++2m", {},
     0.3),
    (diffusers.DPMSolverMultistepScheduler(use_exponential_sigmas=True), "dpm++2m", {}, 0.3),
    (diffusers.DPMSolverMultistepScheduler(use_lu_lambdas=True, final_sigmas_type="sigma_min"), "dpm++2m", {}, 0.3),
    (diffusers.DPMSolverMultistepScheduler(thresholding=True), "dpm++2m", {}, 1.5),
    (diffusers.DPMSolverMultistepScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                           prediction_type="v_prediction"), "dpm++2m", {}, 0.3),
    (diffusers.UniPCMultistepScheduler(use_karras_sigmas=True), "unipc", {}, 0.3),
    (diffusers.DEISMultistepScheduler(), "deis", {"order": 2, "variable": "lam"}, 0.3),
    (diffusers.EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1), "euler", {}, 0.3),
    (diffusers.EulerDiscreteScheduler(use_beta_sigmas=True), "euler", {}, 0.3),
    (diffusers.EulerDiscreteScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                      prediction_type="v_prediction"), "euler", {}, 0.3),
    (diffusers.HeunDiscreteScheduler(use_karras_sigmas=True), "heun", {}, 0.3),
    (diffusers.HeunDiscreteScheduler(clip_sample=True, prediction_type="v_prediction"), "heun", {}, 1.5),
]


@pytest.mark.parametrize("ref, solver, options, mu", DROP_IN,
                         ids=[f"{type(r).__name__[:-9]}{i}" for i, (r, *_) in enumerate(DROP_IN)])
def test_from_config_is_a_drop_in(ref, solver, options, mu):
    """from_config(cfg, solver=<the same algorithm>) gives the source's timesteps (values and dtype) and output."""
    cfg = ref.config
    ref = type(ref).from_config(cfg)
    model = _Tamed(ref.alphas_cumprod, cfg.prediction_type, mu=mu)
    steps = 7
    want = _loop(ref, model, steps, _x(), seed=3)
    ours = pfd.PFODEScheduler.from_config(cfg, solver=solver, solver_options=options)
    got = _loop(ours, model, steps, _x(), seed=3)
    assert torch.equal(ours.timesteps, ref.timesteps) and ours.timesteps.dtype == ref.timesteps.dtype
    assert _rel(got, want) < 1e-5
    assert 0.05 < float(want.std()) < 3  # not saturated
    # another algorithm on the same grid is far away: the comparison is not vacuous
    other = pfd.PFODEScheduler.from_config(cfg, solver="dpm++3m" if solver != "dpm++3m" else "ddim")
    assert _rel(_loop(other, model, steps, _x(), seed=3), want) > 1e-3


def test_keys_change_the_grid_and_the_result():
    """Each key is honoured: changing it changes the timesteps as in diffusers (the old code ignored them)."""
    base = pfd.PFODEScheduler.from_config(diffusers.EulerDiscreteScheduler().config).set_timesteps(6).timesteps
    for kw in [dict(timestep_spacing="trailing"), dict(timestep_spacing="leading"),
               dict(timestep_spacing="leading", steps_offset=1), dict(use_karras_sigmas=True),
               dict(use_exponential_sigmas=True), dict(use_beta_sigmas=True)]:
        ref = diffusers.EulerDiscreteScheduler(**kw)
        ref.set_timesteps(6)
        ours = pfd.PFODEScheduler.from_config(ref.config, solver="euler").set_timesteps(6)
        assert torch.equal(ours.timesteps, ref.timesteps) and not torch.equal(ours.timesteps, base), kw
    # a pfode grid on request (the grid flags are then overridden, and said so)
    ref = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    with pytest.warns(UserWarning, match="use_karras_sigmas=True"):
        ours = pfd.PFODEScheduler.from_config(ref.config, spacing="logsnr")
    ours.set_timesteps(6)
    den = pfd.denoiser(lambda x, t: x, ours.config)
    g = pfode.grid(den.path, 5, "logsnr", t_end=den.path.t_min)
    assert torch.allclose(ours.timesteps.double(), den.path.index_of_t(g).float().double(), atol=1e-3)
    # use_karras_sigmas on a source without it (DDIM): Euler's Karras grid on DDIM's "leading" sigma range
    ours = pfd.PFODEScheduler.from_config(diffusers.DDIMScheduler().config, use_karras_sigmas=True)
    k = diffusers.EulerDiscreteScheduler(timestep_spacing="leading", use_karras_sigmas=True)
    k.set_timesteps(6)
    assert torch.equal(ours.set_timesteps(6).timesteps, k.timesteps)


def test_set_alpha_to_one_and_final_alpha_cumprod():
    for one in (True, False):
        ref = diffusers.DDIMScheduler(set_alpha_to_one=one, steps_offset=1, clip_sample=False)
        ours = pfd.PFODEScheduler.from_config(ref.config, solver="ddim")
        assert float(ours.final_alpha_cumprod) == pytest.approx(float(ref.final_alpha_cumprod), rel=1e-6)
        model = _Tamed(ref.alphas_cumprod)
        assert _rel(_loop(ours, model, 5, _x()), _loop(ref, model, 5, _x())) < 1e-5
    # the pfode grids end where the config says, unless final_sigma says otherwise
    cfg = diffusers.DDIMScheduler(set_alpha_to_one=False).config
    assert not pfd.PFODEScheduler.from_config(cfg, spacing="logsnr").set_timesteps(5)._prog.g.zero
    assert pfd.PFODEScheduler.from_config(cfg, spacing="logsnr", final_sigma="zero").set_timesteps(5)._prog.g.zero


def test_ddim_use_clipped_model_output():
    """DDIMScheduler's clipping keeps the model's noise unless use_clipped_model_output=True: both followed."""
    ref = diffusers.DDIMScheduler(clip_sample=True, clip_sample_range=0.8)
    ours = pfd.PFODEScheduler.from_config(ref.config, solver="ddim")
    model = _Tamed(ref.alphas_cumprod, mu=1.2)
    outs = []
    for use in (False, True):
        for sched in (ref, ours):
            sched.set_timesteps(5)
            x = _x()
            for t in sched.timesteps:
                x = sched.step(model(x, t), t, x, use_clipped_model_output=use).prev_sample
            outs.append(x)
    assert _rel(outs[1], outs[0]) < 1e-5 and _rel(outs[3], outs[2]) < 1e-5 and _rel(outs[2], outs[0]) > 1e-3


def test_zero_terminal_snr():
    ref = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False,
                                  prediction_type="v_prediction")
    ours = pfd.PFODEScheduler.from_config(ref.config, solver="ddim")
    assert torch.equal(ours.betas, ref.betas) and float(ours.betas[-1]) == 1.0
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod) and float(ours.alphas_cumprod[-1]) == 0.0
    euler = diffusers.EulerDiscreteScheduler.from_config(ref.config)
    assert ours.sigma_max == pytest.approx(float(euler.sigmas[0]), rel=1e-6)  # sigma at 2**-24
    e_ours = pfd.PFODEScheduler.from_config(euler.config)
    assert torch.equal(e_ours.alphas_cumprod, euler.alphas_cumprod)
    model = _Tamed(ref.alphas_cumprod, "v_prediction")
    # DDIMScheduler has alpha = 0 at the first timestep; the path uses alpha^2 = 2**-24 there
    assert _rel(_loop(ours, model, 6, _x()), _loop(ref, model, 6, _x())) < 2e-3


def test_heun_timesteps_and_two_stage_grids():
    """spacing="HeunDiscreteScheduler" used to crash on its repeated timesteps; KDPM2's are refused clearly."""
    for ref in (diffusers.HeunDiscreteScheduler(), diffusers.DDIMScheduler(clip_sample=False)):
        ours = pfd.PFODEScheduler.from_config(ref.config, solver="heun", spacing="HeunDiscreteScheduler")
        # every value of the config is kept, defaults of the source included (diffusers' from_config would give
        # keys that DDIMScheduler left at their defaults HeunDiscreteScheduler's defaults: other betas)
        keys = inspect.signature(diffusers.HeunDiscreteScheduler.__init__).parameters
        heun = diffusers.HeunDiscreteScheduler(**{k: v for k, v in ref.config.items() if k in keys})
        model = _Tamed(heun.alphas_cumprod)
        want, got = _loop(heun, model, 5, _x()), _loop(ours, model, 5, _x())
        assert torch.equal(ours.timesteps, heun.timesteps) and ours.order == heun.order == 2
        assert _rel(got, want) < 1e-5
    # a one-stage solver on Heun's grid evaluates each time once
    ours = pfd.PFODEScheduler(solver="euler", spacing="HeunDiscreteScheduler").set_timesteps(5)
    assert torch.equal(ours.timesteps, torch.unique_consecutive(heun.timesteps))
    with pytest.raises(ValueError, match="KDPM2|between its sigmas"):
        pfd.PFODEScheduler(spacing="KDPM2DiscreteScheduler").set_timesteps(5)


def test_as_many_steps_as_training_timesteps():
    n = 50
    for cls, solver in [(diffusers.DDIMScheduler, "ddim"), (diffusers.DPMSolverMultistepScheduler, "dpm++2m")]:
        ref = cls(num_train_timesteps=n)
        ours = pfd.PFODEScheduler.from_config(ref.config, solver=solver)
        x = _loop(ours, _Tamed(ref.alphas_cumprod), n, _x())
        assert bool(torch.isfinite(x).all())
        assert torch.equal(ours.timesteps, torch.unique_consecutive(ours.timesteps))  # one zero-length step dropped
    assert len(ours.timesteps) == n - 1  # DPM-Solver repeats one timestep at n = N (and returns NaN)
    with pytest.raises(ValueError, match="cannot be larger"):  # where diffusers refuses, so do we
        pfd.PFODEScheduler.from_config(diffusers.DDIMScheduler(num_train_timesteps=n).config).set_timesteps(n + 1)
    with pytest.raises(ValueError, match="num_inference_steps=51"):
        pfd.PFODEScheduler(num_train_timesteps=n, spacing="leading").set_timesteps(n + 1)
    assert len(pfd.PFODEScheduler(num_train_timesteps=n).set_timesteps(n + 10).timesteps) == n + 10  # pfode grids


@pytest.mark.parametrize(
    "ref, solver",
    [(diffusers.DPMSolverMultistepScheduler(), "dpm++2m"), (diffusers.HeunDiscreteScheduler(), "heun"),
     (diffusers.EulerDiscreteScheduler(), "euler")],
    ids=["dpm", "heun", "euler"],
)
def test_starting_mid_schedule(ref, solver):
    """An img2img loop from timesteps[k:] works without set_begin_index, starting where diffusers'
    index_for_timestep does (the second place of a repeated timestep), with add_noise at that place."""
    ours = pfd.PFODEScheduler.from_config(ref.config, solver=solver)
    model = _Tamed(ref.alphas_cumprod)
    k = 2 * ref.order  # the first evaluation of a solver step
    outs = []
    for sched in (ref, ours):
        sched.set_timesteps(6)
        sched.set_begin_index(k)  # as img2img pipelines do before add_noise
        y = sched.add_noise(_x(), _x(2), sched.timesteps[k : k + 1])
        sched.set_timesteps(6)  # no begin index now: the loop below infers it
        for t in sched.timesteps[k:]:
            y = sched.step(model(sched.scale_model_input(y, t), t), t, y).prev_sample
        outs.append(y)
    assert _rel(outs[1], outs[0]) < 1e-5 and ours.index_for_timestep(ours.timesteps[k]) == k
    ours.set_timesteps(6)
    with pytest.raises(ValueError, match="one of the timesteps"):
        ours.step(_x(), 12345, _x())
    if ours.order == 2:
        with pytest.raises(ValueError, match="first evaluation of a solver step"):
            ours.set_begin_index(1)


def test_timestep_dtypes_and_compatibles():
    vp = (diffusers.DDIMScheduler(), diffusers.DPMSolverMultistepScheduler(), diffusers.UniPCMultistepScheduler())
    for ref in vp:
        assert pfd.PFODEScheduler.from_config(ref.config).set_timesteps(7).timesteps.dtype == torch.int64
        # pfode grids: int64 where the times are integral, float32 where they are not
        assert pfd.PFODEScheduler.from_config(ref.config, spacing="leading").set_timesteps(7).timesteps.dtype == (
            torch.int64)
        assert pfd.PFODEScheduler.from_config(ref.config, spacing="logsnr").set_timesteps(7).timesteps.dtype == (
            torch.float32)
    for ref in (diffusers.EulerDiscreteScheduler(), diffusers.HeunDiscreteScheduler(),
                diffusers.LMSDiscreteScheduler(), diffusers.FlowMatchEulerDiscreteScheduler()):
        for spacing in (None, "uniform"):
            ours = pfd.PFODEScheduler.from_config(ref.config, spacing=spacing).set_timesteps(7)
            assert ours.timesteps.dtype == torch.float32, (type(ref).__name__, spacing)
    vp = {c.__name__ for c in pfd.PFODEScheduler.from_config(diffusers.DDIMScheduler().config).compatibles}
    flow = {c.__name__ for c in pfd.PFODEScheduler.from_config(
        diffusers.FlowMatchEulerDiscreteScheduler().config).compatibles}
    assert "DDIMScheduler" in vp and "EulerDiscreteScheduler" in vp and "PFODEScheduler" in vp
    assert not any(n.startswith("FlowMatch") or n.startswith("EDM") for n in vp)
    assert "FlowMatchEulerDiscreteScheduler" in flow and "DDIMScheduler" not in flow
    for name in ("DDIMScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"):  # they read our config back
        assert getattr(diffusers, name).from_config(pfd.PFODEScheduler().config).config.num_train_timesteps == 1000


def test_unhonoured_keys_warn():
    with pytest.warns(UserWarning, match="stochastic_sampling=True"):
        pfd.PFODEScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config)
    with pytest.warns(UserWarning, match="skip_prk_steps"):  # a plain dict without a source scheduler
        pfd.PFODEScheduler.from_config({"num_train_timesteps": 1000, "skip_prk_steps": True})
    with pytest.warns(UserWarning, match="use_lu_lambdas=True"):
        pfd.PFODEScheduler.from_config(diffusers.DPMSolverMultistepScheduler(use_lu_lambdas=True).config,
                                       spacing="karras")
    with pytest.warns(UserWarning, match="use_beta_sigmas=True"):
        pfd.PFODEScheduler(use_beta_sigmas=True, spacing="trailing")
    with warnings.catch_warnings():  # the usual swaps are silent
        warnings.simplefilter("error", UserWarning)
        for ref in (diffusers.DDIMScheduler(), diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True),
                    diffusers.PNDMScheduler(skip_prk_steps=True), diffusers.FlowMatchEulerDiscreteScheduler()):
            pfd.PFODEScheduler.from_config(ref.config).set_timesteps(4)


def test_common_scheduler_behaviours(tmp_path):
    """What diffusers' common scheduler tests check: config round trip, step outputs, add_noise, custom timesteps
    and sigmas, set_begin_index, v-prediction and trained betas."""
    ref = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, prediction_type="v_prediction",
                                                trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist())
    ours = pfd.PFODEScheduler.from_config(ref.config, solver="dpm++2m")
    assert torch.equal(ours.betas, ref.betas) and ours.config.prediction_type == "v_prediction"
    ours.save_config(tmp_path)
    back = pfd.PFODEScheduler.from_pretrained(tmp_path)
    assert back.config.source == "DPMSolverMultistepScheduler" and back.config.use_karras_sigmas
    assert back.config.lambda_min_clipped == ref.config.lambda_min_clipped  # the source's own keys are kept
    assert torch.equal(back.set_timesteps(6).timesteps, ours.set_timesteps(6).timesteps)
    model = _Tamed(ref.alphas_cumprod, "v_prediction")
    assert _rel(_loop(back, model, 6, _x()), _loop(ref, model, 6, _x())) < 1e-5
    # step outputs
    x = _x()
    t = back.timesteps[0]
    out = back.step(model(x, t), t, x)
    assert out.prev_sample.shape == x.shape and out.pred_original_sample.shape == x.shape
    tup = back.set_timesteps(6).step(model(x, t), t, x, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.prev_sample)
    # add_noise at schedule timesteps: the schedule's own (Karras) sigmas, as DPMSolverMultistepScheduler
    ref.set_timesteps(6)
    ts = ref.timesteps[[1, 3]]
    assert torch.allclose(back.add_noise(x, _x(2), ts), ref.add_noise(x, _x(2), ts), atol=1e-5)
    # custom timesteps (DDPM) and custom sigmas (Euler) go through the source scheduler
    custom = [901, 700, 433, 211, 37]
    ddpm = diffusers.DDPMScheduler(clip_sample=False)
    ddpm.set_timesteps(timesteps=custom)
    ours = pfd.PFODEScheduler.from_config(ddpm.config, solver="ddpm")
    ours.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, ddpm.timesteps)
    m = _Tamed(ddpm.alphas_cumprod)
    got, want = _x(), _x()
    gens = [torch.Generator().manual_seed(4) for _ in range(2)]
    for tt in ddpm.timesteps:
        want = ddpm.step(m(want, tt), tt, want, generator=gens[0]).prev_sample
        got = ours.step(m(got, tt), tt, got, generator=gens[1]).prev_sample
    assert _rel(got, want) < 1e-5
    sig = [14.0, 5.0, 1.5, 0.4, 0.05, 0.0]
    euler = diffusers.EulerDiscreteScheduler()
    euler.set_timesteps(sigmas=sig)
    ours = pfd.PFODEScheduler.from_config(euler.config, solver="euler").set_timesteps(sigmas=sig)
    assert torch.allclose(ours.timesteps, euler.timesteps) and ours.timesteps.dtype == torch.float32
    m = _Tamed(euler.alphas_cumprod)
    assert _rel(_loop(ours, m, None, _x(), sigmas=sig), _loop(euler, m, None, _x(), sigmas=sig)) < 1e-5
