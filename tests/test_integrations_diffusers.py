"""pfode.integrations.diffusers against real diffusers schedulers, models and pipelines (offline, tiny)."""

from __future__ import annotations

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
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr", "False"),
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
    pipe.scheduler = pfd.PFODEScheduler.from_config(pipe.scheduler.config, solver="dpm++2m")
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
    pipe.scheduler = pfd.PFODEScheduler.from_config(pipe.scheduler.config, solver="unipc", spacing="logsnr")
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


@pytest.mark.parametrize("solver", ["heun", "dpm++2s", "dpm3", "rk4"])
def test_multi_evaluation_solvers_in_pipeline(unet, solver):
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="v_prediction"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pfd.PFODEScheduler.from_config(pipe.scheduler.config, solver=solver, spacing="karras")
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
    cfg = DDPMScheduler(prediction_type="epsilon").config
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
