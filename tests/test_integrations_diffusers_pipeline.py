"""PFODEScheduler inside a tiny random-weight Stable Diffusion pipeline (txt2img and img2img), against the diffusers
scheduler it replaces. Offline: the CLIP tokenizer is built from a vocabulary written to a temporary folder.

The random UNet is tamed: its output is the exact noise prediction of Gaussian latents N(mu, c^2 I) plus 1e-2 times
the random network's output (which depends on the prompt through cross-attention). Latents then stay unsaturated and
every step matters, so agreement to 1e-5 is a real check (another sampler on the same grid lands 1e-3 away).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import (  # noqa: E402  isort: skip
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from pfode.integrations.diffusers import PFODEScheduler  # noqa: E402

MU, C = 0.3, 0.5
#: Stable Diffusion's scheduler config (leading spacing, steps_offset 1, final alpha at timestep 0)
SD_CONFIG = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False,
    clip_sample=False, timestep_spacing="leading",
)


class _TamedUNet(UNet2DConditionModel):
    """Exact eps of N(MU, C^2 I) latents at the (possibly fractional) timestep, plus 1e-2 * the random UNet."""

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict=True, **kwargs):
        out = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        t = float(torch.as_tensor(timestep).flatten()[0])
        lac = self.log_alphas_cumprod
        i = min(max(int(math.floor(t)), 0), lac.numel() - 2)
        a2 = math.exp(float(lac[i]) * (1 - (t - i)) + float(lac[i + 1]) * (t - i))
        a, s = a2**0.5, (1 - a2) ** 0.5
        self.seen.append(t)
        eps = s * (sample - a * MU) / (a * a * C * C + s * s) + 1e-2 * out
        return (eps,) if not return_dict else diffusers.models.unets.unet_2d_condition.UNet2DConditionOutput(sample=eps)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in "abcdefghijklmnopqrstuvwxyz":
            vocab[ch + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    unet = _TamedUNet(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=2,
    ).eval()
    ac = DDIMScheduler(**SD_CONFIG).alphas_cumprod
    unet.log_alphas_cumprod = torch.log(ac.double())
    unet.seen = []
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16,
    ).eval()
    yield dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, safety_checker=None,
               feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    torch.set_num_threads(n)


def _run(components, scheduler, prompt="a cat", img2img=False, steps=6):
    comps = dict(components, scheduler=scheduler)
    pipe = (StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline)(**comps)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=[prompt, "dog"], num_inference_steps=steps, guidance_scale=3.0, output_type="latent",
              generator=torch.Generator().manual_seed(0))
    if img2img:
        image = torch.linspace(0, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
        kw.update(image=image, strength=0.6)
    else:
        kw.update(height=16, width=16)
    components["unet"].seen = []
    with torch.no_grad():
        out = pipe(**kw).images
    return out, list(components["unet"].seen)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "cls, solver",
    [(DDIMScheduler, "ddim"), (DPMSolverMultistepScheduler, "dpm++2m"), (EulerDiscreteScheduler, "euler"),
     (HeunDiscreteScheduler, "heun")],
    ids=["ddim", "dpm++2m", "euler", "heun"],
)
def test_txt2img_and_img2img_match_the_replaced_scheduler(components, cls, solver):
    ref_sched = cls.from_config(DDIMScheduler(**SD_CONFIG).config, **SD_CONFIG)
    ours_sched = PFODEScheduler.from_config(ref_sched.config, solver=solver)
    for img2img in (False, True):
        ref, seen_ref = _run(components, ref_sched, img2img=img2img)
        ours, seen_ours = _run(components, ours_sched, img2img=img2img)
        # the UNet sees the same timesteps: img2img starts at the same noise level as diffusers' scheduler
        assert seen_ours == seen_ref
        assert _rel(ours, ref) < 1e-5, (cls.__name__, img2img)
        assert 0.2 < float(ref.std()) < 2.0 and abs(float(ref.mean()) - MU) < 0.3  # not saturated


def test_the_comparison_is_not_vacuous(components):
    """The prompt reaches the output through the random UNet, and another sampler on the same grid lands far away."""
    cfg = DPMSolverMultistepScheduler.from_config(DDIMScheduler(**SD_CONFIG).config).config
    ours, _ = _run(components, PFODEScheduler.from_config(cfg, solver="dpm++2m"), steps=6)
    other_prompt, _ = _run(components, PFODEScheduler.from_config(cfg, solver="dpm++2m"), prompt="a dog", steps=6)
    other_solver, _ = _run(components, PFODEScheduler.from_config(cfg, solver="ddim"), steps=6)
    assert _rel(other_prompt, ours) > 1e-4 and _rel(other_solver, ours) > 1e-3


def test_img2img_strength_starts_where_diffusers_does(components):
    """The old default (a log-SNR grid) started 10-step, strength-0.6 img2img at timestep 330 instead of 501."""
    for solver in ("dpm++2m", "unipc"):
        sched = PFODEScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, solver=solver)
        _, seen = _run(components, sched, img2img=True, steps=10)
        assert seen[0] == 501.0 and len(seen) == 6
    # asking for a pfode grid is still possible
    sched = PFODEScheduler.from_config(DDIMScheduler(**SD_CONFIG).config, spacing="logsnr")
    _, seen = _run(components, sched, img2img=True, steps=10)
    assert seen[0] != 501.0 and len(seen) == 6
