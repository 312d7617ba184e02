"""`VGTPipeline`: tokenizer + AR generator + autoencoder for local text-to-image generation.

Folder layout (diffusers-style, local or s3://):

    model_index.json   {"format_version", "class": "VGTPipeline", "config": <VGTConfig dict>,
                        "components": {"tokenizer": "tokenizer", "ar": "ar", "ae": "ae"}, "fingerprints"}
    tokenizer/         the tokenizer's own save_pretrained files
    ar/                config.json + model.safetensors (VGTModel, no AE inside)
    ae/                config.json + model.safetensors (VGTAutoencoder)

`__call__` = `sample_latents` (AR side) + `decode` (AE side); serving runs the two on different replicas.
"""
from __future__ import annotations

import copy
import secrets
import tempfile

import torch
import torch.nn.functional as F

from vgt import io as vio
from vgt.artifacts import FORMAT_VERSION, ArtifactError
from vgt.ar.prompts import TOKENIZER_DIR, load_tokenizer_folder
from vgt.config import SampleConfig, VGTConfig, from_dict, to_dict

INDEX_FILE = "model_index.json"
COMPONENTS = {"tokenizer": TOKENIZER_DIR, "ar": "ar", "ae": "ae"}


class VGTPipeline:
    def __init__(self, config: VGTConfig, model, autoencoder, tokenizer):
        self.config = config
        self.model, self.autoencoder, self.tokenizer = model, autoencoder, tokenizer
        model.attach_autoencoder(autoencoder)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: VGTConfig) -> "VGTPipeline":
        """Random weights (or pretrained backbones, as the config says) for every component."""
        from vgt.ae import VGTAutoencoder
        from vgt.ar.model import VGTModel
        from vgt.backbones import load_tokenizer

        tokenizer = load_tokenizer(config.ar.backbone)
        ae = VGTAutoencoder.from_config(config.ae)
        model = VGTModel(config.ar, latent_dim=config.ae.latent_channels, tokenizer=tokenizer)
        return cls(config, model.eval(), ae.eval(), tokenizer)

    @classmethod
    def from_pretrained(cls, path: str) -> "VGTPipeline":
        """Load a pipeline folder, or an adapter folder onto the base pipeline it names (`vgt.adapter`);
        every component's format version and fingerprint are checked. `path` may be a Hugging Face Hub
        repo id, `owner/name[@revision]` (`vgt.hub.resolve`: downloaded to, or read from, the Hub cache)."""
        from vgt.adapter import is_adapter, load_adapter_pipeline
        from vgt.ae import VGTAutoencoder
        from vgt.ar.model import VGTModel
        from vgt.hub import resolve

        path = resolve(path)
        index = read_index(path)
        if is_adapter(index):
            return load_adapter_pipeline(path)
        tokenizer = load_tokenizer_folder(vio.join(path, index["components"]["tokenizer"]))
        model = VGTModel.from_pretrained(vio.join(path, index["components"]["ar"]), tokenizer=tokenizer)
        ae = VGTAutoencoder.from_pretrained(vio.join(path, index["components"]["ae"]))
        config = from_dict(VGTConfig, index["config"])
        config.ae, config.ar = copy.deepcopy(ae.config), copy.deepcopy(model.config)  # what the components built
        return cls(config, model, ae, tokenizer)

    def save_pretrained(self, path: str) -> dict[str, str]:
        """Write the folder; returns the component fingerprints (also recorded in the index)."""
        vio.makedirs(path)
        with tempfile.TemporaryDirectory(prefix="vgt-tokenizer-") as tmp:
            self.tokenizer.save_pretrained(tmp)
            vio.upload(tmp, vio.join(path, COMPONENTS["tokenizer"]))
        prints = {"ar": self.model.save_pretrained(vio.join(path, COMPONENTS["ar"])),
                  "ae": self.autoencoder.save_pretrained(vio.join(path, COMPONENTS["ae"]))}
        config = to_dict(self.config)  # its ae / ar sections: the components' own (full backbone configs)
        config["ae"], config["ar"] = self.autoencoder.portable_config(), self.model.portable_config()["ar"]
        vio.write_json(vio.join(path, INDEX_FILE), {
            "format_version": FORMAT_VERSION, "class": "VGTPipeline", "config": config,
            "components": COMPONENTS, "fingerprints": prints})
        return prints

    def to(self, device=None, dtype: torch.dtype | None = None) -> "VGTPipeline":
        """Move both models; their attention kernels follow (bf16 on a GPU: flash-attention when it imports)."""
        for module in (self.model, self.autoencoder):
            module.to(device=device, dtype=dtype)
            module.use_attention(_device(module), _dtype(module))
        return self

    # -- generation ------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.autoencoder.stride

    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, height: int | None = None,
                 width: int | None = None, guidance_scale: float | None = None, num_steps: int | None = None,
                 parallel_tokens: int | None = None, order: str | None = None, seed: int | None = None,
                 **options):
        """Prompts -> PIL images (prompt-major, `num_images_per_prompt` each).

        height/width default to the preset resolution; the latent grid is (height // 28, width // 28)
        and the decoded image is resized to exactly (height, width) if needed (as the reference).
        Every sampling setting left as None (guidance_scale, num_steps, parallel_tokens, order and the
        keywords cfg_schedule, sampler, feed_mode, temperature) comes from this folder's `config.sample`, as in
        `vgt generate`, `vgt eval` and `vgt serve`. `parallel_tokens` is capped at the number of
        latent tokens. Other keywords (generators, progress) go to `sample_latents`.
        """
        height, width = self.image_size(height, width)
        latents = self.sample_latents(prompt, num_images_per_prompt, height, width, guidance_scale, num_steps,
                                      parallel_tokens, order, seed, **options)
        return self.decode(latents, size=(height, width))

    def sampling(self, height: int | None = None, width: int | None = None, **overrides) -> SampleConfig:
        """The settings a call with these arguments samples with: `config.sample` with every override
        that is not None applied, parallel_tokens capped at the latent token count."""
        height, width = self.image_size(height, width)
        return self.config.sample.resolve(num_tokens=(height // self.stride) * (width // self.stride), **overrides)

    def sample_latents(self, prompt: str | list[str], num_images_per_prompt: int = 1, height: int | None = None,
                       width: int | None = None, guidance_scale: float | None = None, num_steps: int | None = None,
                       parallel_tokens: int | None = None, order: str | None = None, seed: int | None = None,
                       generators: list[torch.Generator] | None = None, cfg_schedule: str | None = None,
                       sampler: str | None = None, feed_mode: str | None = None, temperature: float | None = None,
                       progress=None) -> torch.Tensor:
        """Normalised latents [N, C, h, w] (fp32). Image i (prompt-major) draws its order and noise from
        `image_generator(seed, i)` unless `generators` (one per image) are given. Sampling settings
        left as None come from `config.sample` (see `__call__`)."""
        from vgt.ar.sampling import image_generator, sample_latents

        prompts = [p for p in _prompt_list(prompt) for _ in range(num_images_per_prompt)]
        if generators is None:
            seed = secrets.randbits(62) if seed is None else seed
            generators = [image_generator(seed, i) for i in range(len(prompts))]
        height, width = self.image_size(height, width)
        settings = self.sampling(height, width, guidance_scale=guidance_scale, num_steps=num_steps,
                                 parallel_tokens=parallel_tokens, order=order, cfg_schedule=cfg_schedule,
                                 sampler=sampler, feed_mode=feed_mode, temperature=temperature)
        with torch.no_grad():
            return sample_latents(self.model, prompts, generators, (height // self.stride, width // self.stride),
                                  **settings.as_kwargs(), progress=progress)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> list:
        """Latents [N, C, h, w] -> PIL images (resized to `size` = (height, width) when given)."""
        from PIL import Image

        ae = self.autoencoder
        with torch.no_grad():
            pixels = ae.decode(latents.to(device=_device(ae), dtype=_dtype(ae)))
            if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
                pixels = F.interpolate(pixels.float(), size=size, mode="bilinear", align_corners=False)
        from vgt.data.images import to_uint8

        return [Image.fromarray(img) for img in to_uint8(pixels)]

    def image_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(height, width) with the preset resolution as default, checked against the AE stride."""
        height = height or self.config.data.resolution
        width = width or self.config.data.resolution
        if height < self.stride or width < self.stride:
            raise ValueError(f"height and width must be at least {self.stride} px, got {height}x{width}")
        return height, width


def read_index(path: str) -> dict:
    index_path = vio.join(path, INDEX_FILE)
    if not vio.exists(index_path):
        raise ArtifactError(f"{path!r} is not a vgt pipeline folder: {INDEX_FILE} is missing")
    index = vio.read_json(index_path)
    if index.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path!r} has pipeline format version {index.get('format_version')!r}; this vgt "
                            f"reads version {FORMAT_VERSION}")
    return index


def _prompt_list(prompt) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a non-empty string or list of strings")
    return prompts


def _device(module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype
