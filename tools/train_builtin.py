"""Train the built-in "Shapes" latent diffusion model from nothing.

Stages (each checkpoints into --state and resumes when run again):

  tokenizer  CLIP-style byte-level BPE trained offline on the training captions
  vae        AutoencoderKL 64x64x3 -> 16x16x4 (then a short decoder-only fine-tune)
  unet       CLIPTextModel + UNet2DConditionModel (v-prediction, min-SNR-5 with an x0
             weight of at least 1, 30% of each batch at t >= 800, CFG drop, EMA; the
             text encoder at 1/20 of the UNet's learning rate), trained jointly on
             cached VAE latents
  refine     fine-tune that UNet for detail (plain min-SNR weights, uniform timesteps,
             lower rate), from its EMA weights, into its own checkpoint
  export     write the current EMA weights as a diffusers folder (--out)
  all        tokenizer -> vae -> unet -> refine (default budgets 12 + 75 + 15 minutes:
             under 2 h on 2 CPU cores)

Examples:
  python tools/train_builtin.py --stage all
  python tools/train_builtin.py --stage unet --minutes 60 --export-every 10
  python tools/train_builtin.py --stage export

Everything is seeded (--seed); the device is chosen automatically (CUDA if present).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import shapes  # noqa: E402

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

MAX_LEN = 16
DEFAULT_OUT = ROOT / "resources" / "models" / "shapes"
DEFAULT_STATE = ROOT / "tools" / ".train"

# ----------------------------------------------------------- model configs ---

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 32),
    layers_per_block=1,
    norm_num_groups=1,
    latent_channels=4,
    sample_size=64,
    act_fn="silu",
)

TEXT_HIDDEN = 128
TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=TEXT_HIDDEN,
    intermediate_size=4 * TEXT_HIDDEN,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_LEN,
    hidden_act="quick_gelu",
    projection_dim=TEXT_HIDDEN,
)

# Four levels, 16x16 -> 2x2, with cross-attention at 8x8, 4x4 and 2x2.  Position words need the deep levels:
# the UNet has no positional embeddings, and only at 4x4 and 2x2 does the convolutions' zero padding tell
# every cell where it is (a two-level UNet trained for hours never learned "left" from "right").
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=(2, 1, 1, 1),
    norm_num_groups=4,
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=4,  # (= number of heads in diffusers' naming)
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
)

SCHEDULER_CONFIG: dict[str, Any] = dict(
    # SD's schedule: terminal alpha_bar 0.0047.  (A linear 1e-4..0.02 schedule, alpha_bar_T = 4e-5, made
    # epsilon-prediction errors at t~999 blow up into latent DC offsets with 20-step DDIM.)
    # v-prediction: where the shape goes is decided at t > 800, where an epsilon model must express its
    # x0 guess as a 7%-sized deviation from its input.  On a position-only toy, v learned "left" / "right"
    # in 50-75 steps; epsilon, with the same x0 weights, had not started after 100 (and the epsilon models
    # shipped before never learned position at all).
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------- tokenizer ---


def stage_tokenizer(args):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    out = args.state / "tokenizer"
    corpus = sorted({shapes.caption(s) for s in shapes.train_specs()})
    tok = Tokenizer(BPE(unk_token="<|endoftext|>", continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=1,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    # extra words so that close variants ("center", "a big ...") do not fall apart into bytes
    extra = ["center centre big tiny shape picture image of with and the in at on"]
    tok.train_from_iterator(corpus + extra, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # transformers types merges as strings; the BPE model takes (a, b) pairs, as tokenizers writes them
    clip_tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LEN)  # pyright: ignore[reportArgumentType]
    if out.exists():
        shutil.rmtree(out)
    clip_tok.save_pretrained(out)
    t2 = CLIPTokenizer.from_pretrained(out)
    ex = "a small yellow triangle at the left on a black background"
    ids = t2(ex, padding="max_length", max_length=t2.model_max_length, truncation=True).input_ids
    log(f"tokenizer: vocab {len(t2)}; '{ex}' -> {t2.convert_ids_to_tokens(ids)}")
    assert len(ids) == MAX_LEN and t2.convert_ids_to_tokens(ids)[2] != "<|endoftext|>"
    return t2


def load_tokenizer(args):
    from transformers import CLIPTokenizer

    p = args.state / "tokenizer"
    if not p.exists():
        return stage_tokenizer(args)
    return CLIPTokenizer.from_pretrained(p)


# --------------------------------------------------------------------- data ---


def render_dataset(n: int, seed: int, specs=None):
    """(uint8 images N,64,64,3, list of specs) rendered from the training captions."""
    specs = specs if specs is not None else shapes.train_specs()
    rng = random.Random(seed)
    chosen = [specs[i % len(specs)] for i in range(n)]
    rng.shuffle(chosen)
    imgs = np.stack([np.asarray(shapes.render(s, 64, rng)) for s in chosen])
    return imgs, chosen


def to_tensor(imgs_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------------- VAE ---


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


# diffusers types encode() / decode()'s results as output-or-tuple; with return_dict (the default) it is the output
def latent_dist(vae: AutoencoderKL, x: torch.Tensor) -> DiagonalGaussianDistribution:
    """vae.encode(x).latent_dist"""
    return cast("AutoencoderKLOutput", vae.encode(x)).latent_dist


def decoded(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """vae.decode(z).sample"""
    return cast("DecoderOutput", vae.decode(cast("torch.FloatTensor", z))).sample


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def stage_vae(args, device):
    ck = args.state / "vae.pt"
    seed_all(args.seed)
    vae = new_vae().to(device)
    total_s = args.minutes * 60 if args.minutes else 12 * 60
    dec_s = max(60.0, 0.15 * total_s)  # final part: decoder-only fine-tune
    st = {"step": 0, "elapsed": 0.0, "total_s": total_s, "done": False}
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    if ck.exists():
        c = torch.load(ck, map_location="cpu", weights_only=False)
        vae.load_state_dict(c["model"])
        st = c["st"]
        if c.get("opt") is not None and not c["st"].get("dec"):
            opt.load_state_dict(c["opt"])
        if st.get("done") and not args.force:
            log(f"vae: already done (step {st['step']}), skipping")
            return vae.eval()
        if args.minutes:
            st["total_s"] = st["elapsed"] + args.minutes * 60 if st.get("done") else args.minutes * 60
            st["done"] = False
        total_s = st["total_s"]
        dec_s = max(60.0, 0.15 * total_s)
        log(f"vae: resuming at step {st['step']} ({st['elapsed']:.0f}s of {total_s:.0f}s)")
    imgs, _ = render_dataset(args.vae_images, args.seed + 1)
    val_imgs, _ = render_dataset(256, args.seed + 2)
    data = to_tensor(imgs)
    val = to_tensor(val_imgs).to(device)
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, {len(data)} images, budget {total_s:.0f}s")
    g = torch.Generator().manual_seed(args.seed + st["step"])
    bs = args.vae_batch
    t_last = time.time()
    t_ck = time.time()
    losses = []
    dec_mode = st.get("dec", False)
    if dec_mode:
        vae.encoder.requires_grad_(False)
        assert vae.quant_conv is not None  # VAE_CONFIG keeps the quant conv
        vae.quant_conv.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=3e-4)
    vae.train()
    while st["elapsed"] < total_s:
        if not dec_mode and st["elapsed"] >= total_s - dec_s:
            dec_mode = True
            st["dec"] = True
            vae.encoder.requires_grad_(False)
            assert vae.quant_conv is not None
            vae.quant_conv.requires_grad_(False)
            opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=3e-4)
            log(f"vae: step {st['step']} -> decoder-only fine-tune")
        frac = st["elapsed"] / total_s
        if not dec_mode:
            lr = 2e-3 if frac < 0.5 else 5e-4
        else:
            lr = 3e-4 * (1 - (frac - (1 - dec_s / total_s)) / (dec_s / total_s)) + 2e-5
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(data), (bs,), generator=g)
        x = data[idx].to(device)
        post = latent_dist(vae, x)
        # deterministic (posterior mean) early on: learns far faster; sampled later for a robust decoder
        z = post.mode() if (dec_mode or frac < 0.6) else post.sample()
        rec = decoded(vae, z)
        kl = post.kl().mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        now = time.time()
        st["elapsed"] += now - t_last
        t_last = now
        st["step"] += 1
        losses.append(loss.item())
        if st["step"] % 100 == 0:
            vae.eval()
            with torch.no_grad():
                r = decoded(vae, latent_dist(vae, val[:64]).mode())
            vae.train()
            log(
                f"vae step {st['step']} loss {np.mean(losses):.4f} kl {kl.item():.1f} lr {lr:.1e} "
                f"val psnr {psnr(r, val[:64]):.2f} dB  ({st['elapsed']:.0f}/{total_s:.0f}s)"
            )
            losses = []
        if time.time() - t_ck > 180:
            atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "st": st}, ck)
            t_ck = time.time()
    vae.eval()
    # scaling factor from the data: 1 / std of the latent means
    with torch.no_grad():
        zs = torch.cat(
            [latent_dist(vae, data[i : i + 256].to(device)).mode().cpu() for i in range(0, min(len(data), 2048), 256)]
        )
        r = torch.cat([decoded(vae, latent_dist(vae, val[i : i + 64]).mode()) for i in range(0, len(val), 64)])
    sf = float(1.0 / zs.std())
    vae.register_to_config(scaling_factor=sf)
    st["done"] = True
    st["scaling_factor"] = sf
    st["val_psnr"] = psnr(r, val)
    atomic_save({"model": vae.state_dict(), "opt": None, "st": st, "config": dict(vae.config)}, ck)
    log(
        f"vae: done at step {st['step']}, val psnr {st['val_psnr']:.2f} dB, latent std {zs.std():.3f} "
        f"mean {zs.mean():.3f} -> scaling_factor {sf:.4f}"
    )
    return vae


def load_vae(args, device):
    ck = args.state / "vae.pt"
    c = torch.load(ck, map_location="cpu", weights_only=False)
    vae = new_vae()
    vae.load_state_dict(c["model"])
    vae.register_to_config(scaling_factor=c["st"]["scaling_factor"])
    return vae.to(device).eval()


# ------------------------------------------------------------ latent cache ---


def build_cache(args, device, tokenizer):
    path = args.state / f"latents_{args.unet_images}.pt"
    vae_mtime = (args.state / "vae.pt").stat().st_mtime
    if path.exists():
        c = torch.load(path, map_location="cpu", weights_only=False)
        if c.get("vae_mtime") == vae_mtime:
            return c
        log("latent cache is stale (VAE changed); rebuilding")
    vae = load_vae(args, device)
    t0 = time.time()
    imgs, specs = render_dataset(args.unet_images, args.seed + 3)
    caps = [shapes.caption(s) for s in specs]
    ids = tokenizer(caps, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids
    lat = []
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            x = to_tensor(imgs[i : i + 256]).to(device)
            lat.append((latent_dist(vae, x).mode() * vae.config["scaling_factor"]).half().cpu())
    lat = torch.cat(lat)
    empty = tokenizer([""], padding="max_length", max_length=MAX_LEN, return_tensors="pt").input_ids[0]
    c = {"latents": lat, "ids": ids, "empty": empty, "vae_mtime": vae_mtime}
    atomic_save(c, path)
    log(
        f"cached {len(lat)} latents in {time.time() - t0:.0f}s (std {lat.float().std():.3f}, "
        f"mean {lat.float().mean():.3f})"
    )
    return c


# --------------------------------------------------------------------- UNet ---


def new_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(cfg)


def new_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def new_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


class EMA:
    def __init__(self, modules, decay):
        self.decay = decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]

    @torch.no_grad()
    def update(self, modules, step):
        d = min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow, modules):
            for ps, pm in zip(s.parameters(), m.parameters()):
                ps.lerp_(pm.detach(), 1 - d)
            for bs, bm in zip(s.buffers(), m.buffers()):
                bs.copy_(bm)


def refined_checkpoint(args) -> Path | None:
    """The refine checkpoint, unless the UNet it started from has been trained again since."""
    refined, base = args.state / "unet_refine.pt", args.state / "unet.pt"
    if refined.exists() and (not base.exists() or refined.stat().st_mtime >= base.stat().st_mtime):
        return refined
    return None


def stage_unet(args, device, refine=False):
    """Train (or, with ``refine``, fine-tune the trained) text encoder + UNet; checkpoints and resumes."""
    tokenizer = load_tokenizer(args)
    cache = build_cache(args, device, tokenizer)
    lat_all, ids_all, empty = cache["latents"], cache["ids"], cache["empty"]
    seed_all(args.seed)
    te = new_text_encoder(tokenizer).to(device)
    unet = new_unet().to(device)
    params = list(unet.parameters()) + list(te.parameters())
    # The text encoder learns at a fraction of the UNet's rate: CLIP's token embeddings start at std 0.02,
    # and at the full rate Adam flattens the words the UNet does not use yet (left / right) within ~25 steps,
    # after which nothing can learn them.
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr_scale": 1.0, "weight_decay": 0.01},
            {"params": list(te.parameters()), "lr_scale": args.te_lr_scale, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    ema = EMA([unet, te], args.ema)
    ck = args.state / ("unet_refine.pt" if refine else "unet.pt")
    if refine and not refined_checkpoint(args):
        if ck.exists():
            log("refine: the UNet was trained again since; refining afresh")
            ck.unlink()
        args.init_from = args.state / "unet.pt"
    total_s = (args.minutes or (15 if refine else 75)) * 60
    st = {"step": 0, "elapsed": 0.0, "total_s": total_s}
    if ck.exists():
        c = torch.load(ck, map_location="cpu", weights_only=False)
        unet.load_state_dict(c["unet"])
        te.load_state_dict(c["te"])
        ema.shadow[0].load_state_dict(c["ema_unet"])
        ema.shadow[1].load_state_dict(c["ema_te"])
        opt.load_state_dict(c["opt"])
        st = c["st"]
        # a new budget: continue the cosine from where we are over the remaining time
        if args.minutes and (st["elapsed"] >= st["total_s"] or args.reset_budget):
            st["total_s"] = st["elapsed"] + args.minutes * 60
        torch.set_rng_state(c["rng"])
        log(f"unet: resuming at step {st['step']} ({st['elapsed']:.0f}s of {st['total_s']:.0f}s)")
    elif args.init_from:
        c = torch.load(args.init_from, map_location="cpu", weights_only=False)  # its EMA weights
        unet.load_state_dict(c["ema_unet"])
        te.load_state_dict(c["ema_te"])
        ema = EMA([unet, te], args.ema)
        log(f"unet: initialised from {args.init_from} (step {c['st']['step']})")
    total_s = st["total_s"]
    n_unet = sum(p.numel() for p in unet.parameters())
    n_te = sum(p.numel() for p in te.parameters())
    log(
        f"unet: {n_unet / 1e6:.2f}M params, text encoder {n_te / 1e6:.2f}M; {len(lat_all)} latents; "
        f"batch {args.batch}; budget {total_s:.0f}s; device {device}"
    )
    sched = new_scheduler()
    ac = sched.alphas_cumprod.to(device)
    snr = ac / (1 - ac)
    # Loss weights in x0 terms: min-SNR-gamma, raised to at least --x0-floor where the SNR is low.  Plain
    # epsilon loss weights an x0 error by the SNR (0.005 at t=999), so the layout decided at high t (where
    # the shape goes: position words) carries almost no gradient; a floor of 1 weights it as v-prediction does.
    w_x0 = torch.clamp(torch.clamp(snr, max=args.min_snr), min=args.x0_floor)
    v_pred = sched.config["prediction_type"] == "v_prediction"
    # ... expressed as weights of the loss on the model's output (v error^2 = x0 error^2 * (snr + 1))
    w_all = w_x0 / (snr + 1) if v_pred else w_x0 / snr
    n_high = int(round(args.high_t_share * args.batch))
    g = torch.Generator().manual_seed(args.seed * 7919 + st["step"])
    lat_all = lat_all.float()
    unet.train()
    te.train()
    t_last = time.time()
    t_ck = time.time()
    t_exp = time.time()
    t_log = time.time()
    losses = []
    warm = 200
    stop = args.stop_after_steps
    while st["elapsed"] < total_s:
        frac = min(1.0, st["elapsed"] / total_s)
        lr = args.lr * min(1.0, (st["step"] + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for pg in opt.param_groups:
            pg["lr"] = lr * pg.get("lr_scale", 1.0)
        idx = torch.randint(0, len(lat_all), (args.batch,), generator=g)
        x0 = lat_all[idx].to(device)
        ids = ids_all[idx].clone()
        drop = torch.rand(args.batch, generator=g) < args.cfg_drop
        ids[drop] = empty
        ids = ids.to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        if n_high:  # a share of the batch at high t, where the layout is decided
            t[:n_high] = torch.randint(args.high_t_from, 1000, (n_high,), generator=g)
        t = t.to(device)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        enc = te(ids)[0]
        pred = unet(xt, t, encoder_hidden_states=enc).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise  # v = sqrt(a) eps - sqrt(1-a) x0
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss = (per * w_all[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        st["step"] += 1
        ema.update([unet, te], st["step"])
        now = time.time()
        st["elapsed"] += now - t_last
        t_last = now
        losses.append(per.mean().item())
        if now - t_log > 60 or st["step"] % 200 == 0:
            log(
                f"unet step {st['step']} loss {np.mean(losses):.4f} lr {lr:.2e} "
                f"({st['elapsed']:.0f}/{total_s:.0f}s, {len(losses) / max(1e-6, now - t_log):.2f} it/s)"
            )
            losses = []
            t_log = now
        last = st["elapsed"] >= total_s or (stop and st["step"] >= stop)
        if now - t_ck > args.checkpoint_every * 60 or last:
            c = {
                "unet": unet.state_dict(),
                "te": te.state_dict(),
                "ema_unet": ema.shadow[0].state_dict(),
                "ema_te": ema.shadow[1].state_dict(),
                "opt": opt.state_dict(),
                "st": st,
                "rng": torch.get_rng_state(),
            }
            atomic_save(c, ck)
            t_ck = time.time()
            log(f"checkpoint at step {st['step']}")
            if args.export_every and (time.time() - t_exp > args.export_every * 60 or last):
                export(args, tokenizer, ema.shadow[0], ema.shadow[1], st)
                t_exp = time.time()
            t_last = time.time()  # do not count checkpoint/export time as training time
        if last:
            break
    log(f"unet: finished at step {st['step']} ({st['elapsed']:.0f}s)")
    return unet, te


# ------------------------------------------------------------------- export ---


def export(args, tokenizer=None, unet=None, te=None, st=None):
    """Write the EMA weights as a diffusers StableDiffusionPipeline folder (atomically)."""
    from diffusers import StableDiffusionPipeline

    tokenizer = tokenizer or load_tokenizer(args)
    if unet is None:
        c = torch.load(refined_checkpoint(args) or args.state / "unet.pt", map_location="cpu", weights_only=False)
        unet = new_unet()
        unet.load_state_dict(c["ema_unet"])
        te = new_text_encoder(tokenizer)
        te.load_state_dict(c["ema_te"])
        st = c["st"]
    assert te is not None  # given with unet
    vae = load_vae(args, torch.device("cpu"))
    unet = copy.deepcopy(unet).cpu().float().eval()
    te = copy.deepcopy(te).cpu().float().eval()
    dtype = torch.float16 if args.fp16 else torch.float32
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=te,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=new_scheduler(),  # pyright: ignore[reportArgumentType] - diffusers types it as an enum
        safety_checker=None,  # pyright: ignore[reportArgumentType] - None is documented
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        image_encoder=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype)
    out = Path(args.out)
    tmp = out.parent / (out.name + ".tmp_export")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    meta_p = out / "diffusion_desk.json"
    if meta_p.exists():
        meta = json.loads(meta_p.read_text())
    else:
        meta = {
            "name": "Shapes (built-in)",
            "steps": 20,
            "guidance": 4.0,
            "scheduler": "ddim",
            "width": 64,
            "height": 64,
            "eval": {},
        }
    meta.setdefault("eval", {})
    meta["training"] = {
        "unet_steps": int(st["step"]) if st else None,
        "unet_seconds": round(float(st["elapsed"])) if st else None,
    }
    (tmp / "diffusion_desk.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = out.parent / (out.name + ".old_export")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"exported EMA weights (step {st['step'] if st else '?'}) to {out} ({size / 1e6:.2f} MB)")


# --------------------------------------------------------------------- main ---


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["tokenizer", "vae", "unet", "refine", "export", "all"], default="all")
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget of the stage (all: UNet budget; defaults vae 12, unet 75, refine 15)",
    )
    ap.add_argument("--vae-minutes", type=float, default=12.0, help="VAE budget for --stage all")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=600)
    ap.add_argument("--vae-images", type=int, default=12000)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--unet-images", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--refine-minutes", type=float, default=15.0, help="refine budget for --stage all")
    ap.add_argument("--refine-lr", type=float, default=3e-4)
    ap.add_argument("--refine-ema", type=float, default=0.995)
    ap.add_argument("--refine-x0-floor", type=float, default=0.0)
    ap.add_argument("--te-lr-scale", type=float, default=0.05, help="text encoder learning rate / UNet's")
    ap.add_argument(
        "--x0-floor",
        type=float,
        default=1.0,
        help="lowest loss weight of an x0 error (1: as v-prediction at low SNR; 0: plain min-SNR)",
    )
    ap.add_argument("--high-t-share", type=float, default=0.3, help="share of each batch drawn at high t")
    ap.add_argument("--high-t-from", type=int, default=800, help="lowest timestep of that share")
    ap.add_argument("--checkpoint-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--export-every", type=float, default=10.0, help="minutes (0: only at the end)")
    ap.add_argument("--stop-after-steps", type=int, default=0, help="smoke tests: stop the UNet after N steps")
    ap.add_argument("--reset-budget", action="store_true", help="unet: replace the remaining time budget by --minutes")
    ap.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="unet: start from the weights of another unet.pt checkpoint (fresh optimizer)",
    )
    ap.add_argument("--fp16", action="store_true", help="export fp16 weights (default fp32)")
    ap.add_argument("--force", action="store_true", help="vae: train further even if done")
    args = ap.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    log(f"device {device}, torch {torch.__version__}, stage {args.stage}")
    if args.stage in ("tokenizer", "all") and (args.stage == "tokenizer" or not (args.state / "tokenizer").exists()):
        stage_tokenizer(args)
    if args.stage in ("vae", "all"):
        if args.stage == "all":
            m = args.minutes
            args.minutes = None if (args.state / "vae.pt").exists() else args.vae_minutes
            stage_vae(args, device)
            args.minutes = m
        else:
            stage_vae(args, device)
    if args.export_every == 0:
        args.export_every = 1e9
    if args.stage in ("unet", "all"):
        stage_unet(args, device)
    if args.stage in ("refine", "all"):
        # Detail: the plain min-SNR weights and uniform timesteps, at a lower rate.  The high-t weighting that
        # teaches position words also fills the gradient with the noise of high-t guesses, and shape edges
        # (square vs circle) stall under it; position, once learned, stays.
        args.x0_floor, args.high_t_share = args.refine_x0_floor, 0.0
        args.lr, args.ema = args.refine_lr, args.refine_ema
        if args.stage == "all":
            args.minutes = args.refine_minutes
        stage_unet(args, device, refine=True)
    if args.stage == "export":
        export(args)


if __name__ == "__main__":
    main()
