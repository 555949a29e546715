"""`fastdiff.generate`: a diffusers pipeline's prompt encoding and VAE decode around `fastdiff.sample`.

The pipeline's own methods encode the prompt (``encode_prompt``, ``_get_add_time_ids``) and its VAE
and image processor decode; the denoising loop in between is fastdiff's: one model call on the
[uncond; cond] batch and one fused `sampler_update` per step, guidance folded into the update, no
host sync, ``cuda_graph=True`` possible. Families (by pipeline class): Stable Diffusion 1.x/2.x,
SDXL (added time ids and pooled text embeddings), DiT (class labels), PixArt-alpha/sigma and SD3
(flow matching). The sampler defaults to the pipeline's scheduler (same class, same config), so
the images are the pipeline's own; ``sampler="dpmpp_2m"`` etc. picks another with the pipeline's
schedule. Stochastic samplers draw their noise from ``generator`` in the order diffusers'
schedulers do, so they too give the pipeline's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ..samplers import NAMED, Sampler, make_sampler, sample


@dataclass
class _Job:
    """What a family prepares: the latent shape, the model call, how to decode, the output class."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    model_fn: Callable[[Tensor, Tensor], Tensor]
    finish: Callable[[Tensor, str], Any]  # (latents, output_type) -> the pipeline's output
    sample_kwargs: dict


def _family(pipe: Any) -> str:
    names = [c.__name__ for c in type(pipe).__mro__]
    for family, cls in (("sdxl", "StableDiffusionXLPipeline"), ("sd3", "StableDiffusion3Pipeline"),
                        ("pixart", "PixArtAlphaPipeline"), ("pixart", "PixArtSigmaPipeline"), ("dit", "DiTPipeline"),
                        ("sd", "StableDiffusionPipeline")):
        if cls in names:
            return family
    raise TypeError(f"fastdiff.generate: {type(pipe).__name__} is not a supported pipeline (Stable Diffusion 1.x/2.x, "
                    "SDXL, DiT, PixArt-alpha/sigma, SD3 text-to-image)")


def _with_eta(cls: type, options: dict, eta: Optional[float]) -> dict:
    # The pipelines hand `eta` to scheduler.step only where step takes it (DDIM); elsewhere it is ignored.
    if eta is None or "eta" not in cls.step_options:
        return options
    if "eta" in options and options["eta"] != eta:
        raise TypeError(f"fastdiff.generate: eta given twice: eta={eta} and sampler_options eta={options['eta']}")
    return {**options, "eta": eta}


def _sampler(pipe: Any, sampler: Union[str, Sampler, None], options: dict, eta: Optional[float] = None) -> Sampler:
    config = pipe.scheduler.config
    if isinstance(sampler, Sampler):
        if options:
            raise TypeError("fastdiff.generate: options configure a named sampler; a Sampler instance carries its own")
        if eta is not None and "eta" in sampler.step_options:
            raise TypeError("fastdiff.generate: eta configures a named sampler; a Sampler instance carries its own")
        return sampler
    if sampler is None:
        name = type(pipe.scheduler).__name__
        cls = next((c for c, _ in NAMED.values() if c.scheduler_class.__name__ == name), None)
        if cls is None:
            raise ValueError(f"fastdiff.generate: no fastdiff sampler runs {name}; pass sampler= "
                             f"({', '.join(NAMED)})")
        return cls(config, **_with_eta(cls, options, eta))
    # The configuration `pipe.scheduler = diffusers.<that class>.from_config(pipe.scheduler.config)` would
    # hold: diffusers drops the keys the old config left at its class's defaults, so the new class's apply.
    import diffusers

    if sampler not in NAMED:
        raise ValueError(f"fastdiff.generate: sampler expected None, a Sampler or one of {', '.join(NAMED)}, got {sampler!r}")
    cls = getattr(diffusers, NAMED[sampler][0].scheduler_class.__name__)
    return make_sampler(sampler, dict(cls.from_config(config).config), **_with_eta(NAMED[sampler][0], options, eta))


def _latents(pipe: Any, shape, dtype, device, generator, latents: Optional[Tensor]) -> Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    if latents is not None:
        return latents.to(device=device, dtype=dtype)
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def _vae_decode(pipe: Any, latents: Tensor) -> Tensor:
    """Undo the latent scaling (scaling_factor, shift_factor or latents_mean/std) and decode, as the pipelines do."""
    vae, cfg = pipe.vae, pipe.vae.config
    upcast = vae.dtype == torch.float16 and getattr(cfg, "force_upcast", False) and _family(pipe) == "sdxl"
    if upcast:  # SDXL's fp16 VAE overflows: decoded in float32, as the SDXL pipeline does
        vae.to(torch.float32)
        latents = latents.float()
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / cfg.scaling_factor + mean
    else:
        latents = latents / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None:
            latents = latents + cfg.shift_factor
    image = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(torch.float16)
    return image


def _cfg(uncond: Optional[Tensor], cond: Tensor, guided: bool) -> Tensor:
    return torch.cat([uncond, cond]) if guided else cond


# ---- families ------------------------------------------------------------------------------------------------
def _sd(pipe, guided, device, kw) -> _Job:
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    batch = kw["batch"]
    pos, neg = pipe.encode_prompt(kw["prompt"], device, kw["num_images_per_prompt"], guided, kw["negative_prompt"],
                                  prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
                                  clip_skip=kw.get("clip_skip"))
    ctx = _cfg(neg, pos, guided)
    unet = pipe.unet

    def model_fn(x, t):
        return unet(x, t, encoder_hidden_states=ctx, cross_attention_kwargs=kw.get("cross_attention_kwargs"),
                    return_dict=False)[0]

    def finish(latents, output_type):
        if output_type == "latent":
            return StableDiffusionPipelineOutput(images=latents, nsfw_content_detected=None)
        image = _vae_decode(pipe, latents)
        image, nsfw = pipe.run_safety_checker(image, device, pos.dtype)
        denorm = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
        image = pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denorm)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)

    shape = (batch, unet.config.in_channels, kw["height"] // pipe.vae_scale_factor, kw["width"] // pipe.vae_scale_factor)
    return _Job(shape, pos.dtype, model_fn, finish, {"guidance_rescale": kw.get("guidance_rescale", 0.0)})


def _sdxl(pipe, guided, device, kw) -> _Job:
    from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

    pos, neg, pooled, neg_pooled = pipe.encode_prompt(
        kw["prompt"], kw.get("prompt_2"), device, kw["num_images_per_prompt"], guided, kw["negative_prompt"],
        kw.get("negative_prompt_2"), prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
        pooled_prompt_embeds=kw.get("pooled_prompt_embeds"), negative_pooled_prompt_embeds=kw.get("negative_pooled_prompt_embeds"),
        clip_skip=kw.get("clip_skip"))
    h, w = kw["height"], kw["width"]
    proj = int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
    ids = pipe._get_add_time_ids(tuple(kw.get("original_size") or (h, w)), tuple(kw.get("crops_coords_top_left", (0, 0))),
                                 tuple(kw.get("target_size") or (h, w)), dtype=pos.dtype, text_encoder_projection_dim=proj)
    ctx = _cfg(neg, pos, guided).to(device)
    added = {"text_embeds": _cfg(neg_pooled, pooled, guided).to(device),
             "time_ids": _cfg(ids, ids, guided).to(device).repeat(kw["batch"], 1)}
    unet = pipe.unet

    def model_fn(x, t):
        return unet(x, t, encoder_hidden_states=ctx, cross_attention_kwargs=kw.get("cross_attention_kwargs"),
                    added_cond_kwargs=added, return_dict=False)[0]

    def finish(latents, output_type):
        if output_type == "latent":
            return StableDiffusionXLPipelineOutput(images=latents)
        image = _vae_decode(pipe, latents)
        if getattr(pipe, "watermark", None) is not None:
            image = pipe.watermark.apply_watermark(image)
        return StableDiffusionXLPipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    shape = (kw["batch"], unet.config.in_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    return _Job(shape, pos.dtype, model_fn, finish, {"guidance_rescale": kw.get("guidance_rescale", 0.0)})


def _learned_sigma(out: Tensor, channels: int, model: Any) -> Tensor:
    return out[:, :channels] if model.config.out_channels // 2 == channels else out


def _dit(pipe, guided, device, kw) -> _Job:
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    labels = kw.get("class_labels")
    if labels is None:
        raise ValueError("fastdiff.generate: a DiT pipeline takes class_labels (ImageNet class ids), not a prompt")
    labels = torch.tensor(labels if isinstance(labels, (list, tuple)) else [labels], device=device).reshape(-1)
    model = pipe.transformer
    size, channels = model.config.sample_size, model.config.in_channels
    # fastdiff's batch order is [uncond; cond]; class 1000 is DiT's "null" label
    y = _cfg(torch.full_like(labels, 1000), labels, guided)

    def model_fn(x, t):
        out = model(x, timestep=t.reshape(1).expand(x.shape[0]), class_labels=y).sample
        return _learned_sigma(out, channels, model)

    def finish(latents, output_type):
        if output_type == "latent":
            return ImagePipelineOutput(images=latents)
        image = (_vae_decode(pipe, latents) / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        return ImagePipelineOutput(images=pipe.numpy_to_pil(image) if output_type == "pil" else image)

    return _Job((labels.shape[0], channels, size, size), model.dtype, model_fn, finish, {})


def _pixart(pipe, guided, device, kw) -> _Job:
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    sigma = "PixArtSigmaPipeline" in [c.__name__ for c in type(pipe).__mro__]
    pos, pos_mask, neg, neg_mask = pipe.encode_prompt(
        kw["prompt"], guided, negative_prompt=kw["negative_prompt"] or "", num_images_per_prompt=kw["num_images_per_prompt"],
        device=device, prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
        prompt_attention_mask=kw.get("prompt_attention_mask"), negative_prompt_attention_mask=kw.get("negative_prompt_attention_mask"),
        clean_caption=kw.get("clean_caption", False), max_sequence_length=kw.get("max_sequence_length", 300 if sigma else 120))
    model = pipe.transformer
    h, w, batch = kw["height"], kw["width"], kw["batch"]
    added = {"resolution": None, "aspect_ratio": None}
    if model.config.sample_size == 128:  # PixArt-alpha 1024: resolution and aspect-ratio conditioning
        res = torch.tensor([h, w]).repeat(batch, 1).to(dtype=pos.dtype, device=device)
        ar = torch.tensor([float(h / w)]).repeat(batch, 1).to(dtype=pos.dtype, device=device)
        added = {"resolution": _cfg(res, res, guided), "aspect_ratio": _cfg(ar, ar, guided)}
    ctx, mask = _cfg(neg, pos, guided), _cfg(neg_mask, pos_mask, guided)
    channels = model.config.in_channels

    def model_fn(x, t):
        out = model(x, encoder_hidden_states=ctx, encoder_attention_mask=mask, timestep=t.reshape(1).expand(x.shape[0]),
                    added_cond_kwargs=added, return_dict=False)[0]
        return _learned_sigma(out, channels, model)

    def finish(latents, output_type):
        if output_type == "latent":
            return ImagePipelineOutput(images=latents)
        return ImagePipelineOutput(images=pipe.image_processor.postprocess(_vae_decode(pipe, latents), output_type=output_type))

    shape = (batch, channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    return _Job(shape, pos.dtype, model_fn, finish, {})


def _sd3(pipe, guided, device, kw) -> _Job:
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

    pos, neg, pooled, neg_pooled = pipe.encode_prompt(
        kw["prompt"], kw.get("prompt_2"), kw.get("prompt_3"), device=device, num_images_per_prompt=kw["num_images_per_prompt"],
        do_classifier_free_guidance=guided, negative_prompt=kw["negative_prompt"], negative_prompt_2=kw.get("negative_prompt_2"),
        negative_prompt_3=kw.get("negative_prompt_3"), prompt_embeds=kw["prompt_embeds"],
        negative_prompt_embeds=kw["negative_prompt_embeds"], pooled_prompt_embeds=kw.get("pooled_prompt_embeds"),
        negative_pooled_prompt_embeds=kw.get("negative_pooled_prompt_embeds"), clip_skip=kw.get("clip_skip"),
        max_sequence_length=kw.get("max_sequence_length", 256))
    model = pipe.transformer
    ctx, pool = _cfg(neg, pos, guided), _cfg(neg_pooled, pooled, guided)

    def model_fn(x, t):
        return model(hidden_states=x, timestep=t.reshape(1).expand(x.shape[0]), encoder_hidden_states=ctx,
                     pooled_projections=pool, joint_attention_kwargs=kw.get("joint_attention_kwargs"), return_dict=False)[0]

    def finish(latents, output_type):
        if output_type == "latent":
            return StableDiffusion3PipelineOutput(images=latents)
        return StableDiffusion3PipelineOutput(images=pipe.image_processor.postprocess(_vae_decode(pipe, latents),
                                                                                     output_type=output_type))

    shape = (kw["batch"], model.config.in_channels, kw["height"] // pipe.vae_scale_factor, kw["width"] // pipe.vae_scale_factor)
    extra = {}
    if pipe.scheduler.config.get("use_dynamic_shifting", False):
        raise ValueError("fastdiff.generate: SD3 with use_dynamic_shifting (mu from the image size) is not handled")
    return _Job(shape, pos.dtype, model_fn, finish, extra)


#: the pipeline __call__ arguments each family takes beyond generate's own
_EXTRA = {
    "sd": {"clip_skip", "cross_attention_kwargs", "guidance_rescale", "eta"},
    "sdxl": {"prompt_2", "negative_prompt_2", "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "original_size",
             "crops_coords_top_left", "target_size", "clip_skip", "cross_attention_kwargs", "guidance_rescale", "eta"},
    "dit": {"class_labels"},
    "pixart": {"prompt_attention_mask", "negative_prompt_attention_mask", "clean_caption", "max_sequence_length", "eta"},
    "sd3": {"prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds", "clip_skip", "max_sequence_length", "joint_attention_kwargs"},
}
_FAMILIES = {"sd": _sd, "sdxl": _sdxl, "dit": _dit, "pixart": _pixart, "sd3": _sd3}
_DEFAULT_GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "dit": 4.0, "pixart": 4.5, "sd3": 7.0}


def _prompt_batch(prompt, prompt_embeds) -> int:
    if prompt is not None:
        return 1 if isinstance(prompt, str) else len(prompt)
    if prompt_embeds is None:
        raise ValueError("fastdiff.generate: pass prompt or prompt_embeds")
    return prompt_embeds.shape[0]


@torch.no_grad()
def generate(
    pipe: Any,
    prompt: Union[str, list[str], None] = None,
    *,
    sampler: Union[str, Sampler, None] = None,
    steps: int = 20,
    guidance_scale: Optional[float] = None,
    negative_prompt: Union[str, list[str], None] = None,
    prompt_embeds: Optional[Tensor] = None,
    negative_prompt_embeds: Optional[Tensor] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    num_images_per_prompt: int = 1,
    generator: Optional[torch.Generator] = None,
    latents: Optional[Tensor] = None,
    output_type: str = "pil",
    return_dict: bool = True,
    cuda_graph: bool = False,
    sampler_options: Optional[dict] = None,
    **pipeline_kwargs: Any,
) -> Any:
    """Generate images with ``pipe``'s text encoders and VAE and fastdiff's sampling loop.

    Arguments as in the pipeline's ``__call__`` (``steps`` is ``num_inference_steps``; DiT takes
    ``class_labels``; SDXL ``prompt_2``, ``pooled_prompt_embeds``, ``original_size``, ...; PixArt
    ``prompt_attention_mask``, ...; SD3 ``prompt_3``, ...). ``guidance_scale`` defaults to the
    pipeline's default; at or below 1 the model runs unguided, as in the pipelines. ``sampler``: None
    (the pipeline's scheduler), a `fastdiff.sample` sampler name, or a Sampler; ``sampler_options``
    configure a named one. Returns the pipeline's output class (a tuple without ``return_dict``);
    ``output_type="latent"`` returns the final latents.
    """
    family = _family(pipe)
    steps = pipeline_kwargs.pop("num_inference_steps", steps)
    unknown = sorted(set(pipeline_kwargs) - _EXTRA[family])
    if unknown:
        raise TypeError(f"fastdiff.generate: {type(pipe).__name__} arguments not handled here: {', '.join(unknown)} "
                        f"(taken: {', '.join(sorted(_EXTRA[family]))})")
    eta = pipeline_kwargs.pop("eta", None)
    device = getattr(pipe, "_execution_device", None) or pipe.device
    guidance = _DEFAULT_GUIDANCE[family] if guidance_scale is None else float(guidance_scale)
    guided = guidance > 1.0
    batch = None if family == "dit" else _prompt_batch(prompt, prompt_embeds) * num_images_per_prompt
    default = (pipe.default_sample_size * pipe.vae_scale_factor if hasattr(pipe, "default_sample_size")
               else getattr(getattr(pipe, "unet", None) or pipe.transformer, "config").sample_size * getattr(pipe, "vae_scale_factor", 8))
    kw = dict(pipeline_kwargs, prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
              negative_prompt_embeds=negative_prompt_embeds, height=height or default, width=width or default,
              num_images_per_prompt=num_images_per_prompt, batch=batch)
    job = _FAMILIES[family](pipe, guided, device, kw)
    noise = _latents(pipe, job.shape, job.dtype, device, generator, latents)
    chosen = _sampler(pipe, sampler, dict(sampler_options or {}), eta)
    progress = not getattr(pipe, "_progress_bar_config", {}).get("disable", False)
    out = sample(job.model_fn, noise, sampler=chosen, steps=steps, guidance_scale=guidance if guided else None,
                 generator=generator, cuda_graph=cuda_graph, progress=progress, **job.sample_kwargs)
    result = job.finish(out, output_type)
    if hasattr(pipe, "maybe_free_model_hooks"):
        pipe.maybe_free_model_hooks()
    return result if return_dict else result.to_tuple()
