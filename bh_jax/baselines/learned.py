"""Learned baselines of the paper's tables, trained on the built-in data set.

* `unet`: supervised, paired: source-domain slice -> target slice, for ONE
  source domain (L1 or L2 loss inside the brain).
* `cyclegan`: unpaired: generators source->target and target->source, two
  PatchGAN discriminators, least-squares adversarial + cycle losses.
* `segmenter`: white-matter segmentation U-net trained on target-site slices
  (the downstream task of Table 3).

A baseline folder holds `baseline.json` (the `BaselineConfig` and the slice
geometry), `state/` (resumable training state, orbax), and once training has
finished `params/` (orbax) and `metrics.json`; `load_baseline` turns it into
a function of slices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from bh_jax.baselines.networks import PatchDiscriminator, UNet
from bh_jax.batching import batch_indices, fixed_batches
from bh_jax.config import DataConfig
from bh_jax.data.manifest import prepare_entry, select, target_volumes, wm_slices
from bh_jax.io import write_json_atomic

KINDS = ("unet", "cyclegan", "segmenter")
BASELINE_VERSION = 1
CONFIG_FILE = "baseline.json"


@dataclass(frozen=True)
class BaselineConfig:
    """What to train.

    Attributes:
      kind: 'unet', 'cyclegan' or 'segmenter'.
      source: the ONE source domain (site name) of unet / cyclegan.
      features, depth: U-net width and number of downsamplings.
      steps, batch_size, learning_rate, seed: Adam optimisation.
      loss: 'l1' or 'l2' (unet).
      cycle_weight: weight of the cycle losses against the adversarial ones.
    """

    kind: str
    source: str = "exp"
    features: int = 16
    depth: int = 2
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    loss: str = "l1"
    cycle_weight: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")


# ----------------------------------------------------------------------------
# Data


def training_data(config: BaselineConfig, manifest: dict, data: DataConfig,
                  split: str = "train") -> dict[str, np.ndarray]:
    """[N, H, W] arrays of one split of the built-in data set for a baseline."""
    target = manifest["target_site"]
    if config.kind == "segmenter":
        volumes = [(prepare_entry(e, data), e) for e in select(manifest, split, target)]
        labels = [wm_slices(p, e["wm"]) for p, e in volumes]
        return {"image": np.concatenate([p.slices for p, _ in volumes]),
                "label": np.concatenate(labels).astype(np.float32),
                "mask": np.concatenate([p.slice_masks for p, _ in volumes])}
    entries = select(manifest, split, config.source)
    if not entries:
        raise ValueError(f"no {split} images of source site {config.source!r} "
                         f"(sites: {', '.join(manifest['sites'])})")
    sources = [prepare_entry(e, data) for e in entries]
    if config.kind == "unet":  # pairs: the same subject at the target site
        truths = [prepare_entry(e, data, key="truth") for e in entries]
    else:  # unpaired: the target site's own training images
        truths = target_volumes(manifest, data, split)
    return {"source": np.concatenate([p.slices for p in sources]),
            "source_mask": np.concatenate([p.slice_masks for p in sources]),
            "target": np.concatenate([p.slices for p in truths]),
            "target_mask": np.concatenate([p.slice_masks for p in truths])}


# ----------------------------------------------------------------------------
# Networks and losses


def networks(config: BaselineConfig) -> dict[str, object]:
    generator = UNet(config.features, config.depth, residual=True)
    if config.kind == "unet":
        return {"g": generator}
    if config.kind == "segmenter":
        return {"seg": UNet(config.features, config.depth)}
    return {"g": generator, "f": UNet(config.features, config.depth, residual=True),
            "d_target": PatchDiscriminator(config.features),
            "d_source": PatchDiscriminator(config.features)}


def init_params(config: BaselineConfig, height: int, width: int) -> dict:
    x = jnp.zeros((1, height, width, 1))
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    return {name: net.init(key, x)["params"]
            for key, (name, net) in zip(keys, networks(config).items())}


def _masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _apply(net, params, x: jnp.ndarray) -> jnp.ndarray:
    return net.apply({"params": params}, x[..., None])[..., 0]


def make_step(config: BaselineConfig) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, jitted step(params, opt_state, batch) -> (params, opt_state, losses))."""
    nets = networks(config)
    optimizer = optax.adam(config.learning_rate, b1=0.5 if config.kind == "cyclegan" else 0.9)

    def supervised_loss(params, batch):
        if config.kind == "segmenter":
            logits = _apply(nets["seg"], params["seg"], batch["image"])
            bce = optax.sigmoid_binary_cross_entropy(logits, batch["label"])
            loss = _masked_mean(bce, batch["mask"])
        else:
            error = _apply(nets["g"], params["g"], batch["source"]) - batch["target"]
            error = jnp.abs(error) if config.loss == "l1" else error**2
            loss = _masked_mean(error, batch["source_mask"] & batch["target_mask"])
        return loss, {"loss": loss}

    def cyclegan_loss(params, batch):
        """Generator and discriminator losses in one sum: stop_gradient keeps each
        term's gradient on its own networks (the generators' terms see frozen
        discriminators, the discriminators' terms see the fakes as constants)."""
        s, t = batch["source"], batch["target"]
        fake_t, fake_s = _apply(nets["g"], params["g"], s), _apply(nets["f"], params["f"], t)

        def d_t(x, p):
            return nets["d_target"].apply({"params": p["d_target"]}, x[..., None])

        def d_s(x, p):
            return nets["d_source"].apply({"params": p["d_source"]}, x[..., None])

        frozen = jax.lax.stop_gradient(params)
        # Generators: fool the discriminators and close both cycles.
        adversarial = (jnp.mean((d_t(fake_t, frozen) - 1) ** 2)
                       + jnp.mean((d_s(fake_s, frozen) - 1) ** 2))
        cycle = config.cycle_weight * (
            _masked_mean(jnp.abs(_apply(nets["f"], params["f"], fake_t) - s),
                         batch["source_mask"])
            + _masked_mean(jnp.abs(_apply(nets["g"], params["g"], fake_s) - t),
                           batch["target_mask"]))
        # Discriminators: real -> 1, fake -> 0.
        fake_t, fake_s = jax.lax.stop_gradient(fake_t), jax.lax.stop_gradient(fake_s)
        discriminator = 0.5 * (jnp.mean((d_t(t, params) - 1) ** 2)
                               + jnp.mean(d_t(fake_t, params) ** 2)
                               + jnp.mean((d_s(s, params) - 1) ** 2)
                               + jnp.mean(d_s(fake_s, params) ** 2))
        return adversarial + cycle + discriminator, {
            "loss": cycle, "adversarial": adversarial, "discriminator": discriminator}

    loss_fn = cyclegan_loss if config.kind == "cyclegan" else supervised_loss

    @jax.jit
    def step(params, opt_state, batch):
        grads, losses = jax.grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses

    return optimizer, step


# ----------------------------------------------------------------------------
# Training, saving, loading


_BATCH_GROUPS = {
    "unet": [("source", "source_mask", "target", "target_mask")],
    "cyclegan": [("source", "source_mask"), ("target", "target_mask")],
    "segmenter": [("image", "label", "mask")],
}


SAVE_EVERY = 200  # steps between resumable checkpoints (WORKDIR/state, orbax)


def train_baseline(config: BaselineConfig, data: DataConfig, manifest: dict,
                   workdir: str | Path, progress: bool = True,
                   stop_at: int | None = None) -> dict:
    """Trains (or resumes training) a baseline on the built-in data's training split.

    Every `SAVE_EVERY` steps the parameters, optimiser state and loss history go
    to WORKDIR/state; running again with the same config resumes from there and
    gives the same parameters as an uninterrupted run (batches depend on the
    step only). A different config in an existing folder is an error.

    Args:
      stop_at: stop (and checkpoint) after this many steps, as if interrupted.

    Returns:
      The metrics (also written to WORKDIR/metrics.json); {} if stopped early.
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    _claim_folder(workdir, config, data)
    arrays = training_data(config, manifest, data)
    optimizer, step = make_step(config)
    params = init_params(config, data.height, data.width)
    state = {"params": params, "opt_state": optimizer.init(params)}
    manager = ocp.CheckpointManager((workdir / "state").absolute(),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=1))
    first, history = 0, []
    if manager.latest_step() is not None:
        first = manager.latest_step()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        state = manager.restore(first, args=ocp.args.StandardRestore(abstract))
        history = json.loads((workdir / "history.json").read_text())
    sizes = {k: len(v) for k, v in arrays.items()}
    last = min(config.steps, stop_at if stop_at is not None else config.steps)
    bar = tqdm(range(first, last), initial=first, total=config.steps,
               desc=f"train {config.kind}", disable=not progress)
    for i in bar:
        batch = {}
        # Arrays of a group share batch indices (pairs); unpaired groups draw their own.
        for offset, keys in enumerate(_BATCH_GROUPS[config.kind]):
            index = batch_indices(sizes[keys[0]], config.batch_size, config.seed + offset, i)
            batch.update({k: arrays[k][index] for k in keys})
        params, opt_state, losses = step(state["params"], state["opt_state"], batch)
        state = {"params": params, "opt_state": opt_state}
        if i % 50 == 0 or i == config.steps - 1:
            history.append({"step": i, **{k: float(v) for k, v in losses.items()}})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if (i + 1) % SAVE_EVERY == 0 or i + 1 == last:
            manager.save(i + 1, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            write_json_atomic(workdir / "history.json", history)
    manager.close()
    if last < config.steps:
        return {}
    save_params(workdir, state["params"])
    metrics = {"kind": config.kind, "source": config.source, "slices": sizes,
               "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
               "history": history}
    write_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def _claim_folder(workdir: Path, config: BaselineConfig, data: DataConfig) -> None:
    """Writes WORKDIR/baseline.json, or checks that an existing one matches."""
    record = {"version": BASELINE_VERSION, "baseline": dataclasses.asdict(config),
              "data": dataclasses.asdict(data)}
    path = workdir / CONFIG_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != record:
            raise ValueError(f"{path}: this folder holds a different baseline "
                             f"({saved.get('baseline')}); use another --workdir")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def save_params(workdir: Path, params: dict) -> None:
    """The final parameters, WORKDIR/params (orbax): what `load_baseline` reads."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((workdir / "params").absolute(), params, force=True)
    checkpointer.wait_until_finished()


def is_trained(workdir: str | Path) -> bool:
    """Whether WORKDIR holds a finished baseline."""
    return (Path(workdir) / "metrics.json").is_file() and (Path(workdir) / "params").is_dir()


@dataclass
class LoadedBaseline:
    """A trained baseline: `apply(slices [N, H, W], masks) -> [N, H, W]`.

    Translators return images in [0, 1] (zero outside the mask); the segmenter
    returns a boolean white-matter mask.
    """

    config: BaselineConfig
    data: DataConfig
    params: dict
    workdir: Path

    def apply(self, slices: np.ndarray, masks: np.ndarray, batch_size: int = 16) -> np.ndarray:
        name = "seg" if self.config.kind == "segmenter" else "g"
        run = _compiled_apply(self.config, name)  # fixed batch shape: one compilation
        x = np.asarray(slices)
        outputs = [np.asarray(run(self.params[name], np.asarray(x[index], np.float32)))[:valid]
                   for index, valid in fixed_batches(len(x), batch_size)]
        out = np.concatenate(outputs) if outputs else np.zeros(np.shape(slices), np.float32)
        if self.config.kind == "segmenter":
            return (out > 0.0) & np.asarray(masks, bool)
        return np.clip(out, 0.0, 1.0) * masks


@functools.lru_cache(maxsize=None)
def _compiled_apply(config: BaselineConfig, name: str) -> Callable:
    net = networks(config)[name]
    return jax.jit(lambda params, x: _apply(net, params, x))


def load_baseline(workdir: str | Path) -> LoadedBaseline:
    """Loads a folder written by `train_baseline`; ValueError names what is wrong."""
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; is {workdir} a baseline folder "
                         f"(python -m bh_jax.baselines.train)?")
    raw = json.loads(path.read_text())
    if not is_trained(workdir):
        raise ValueError(f"{workdir}: training has not finished; run the same "
                         f"`python -m bh_jax.baselines.train` command again to resume")
    if raw.get("version") != BASELINE_VERSION:
        raise ValueError(f"{path}: baseline version {raw.get('version')!r} is not supported "
                         f"(expects {BASELINE_VERSION})")
    config, data = BaselineConfig(**raw["baseline"]), DataConfig(**raw["data"])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            jax.eval_shape(lambda: init_params(config, data.height, data.width)))
    params = ocp.StandardCheckpointer().restore((workdir / "params").absolute(), abstract)
    return LoadedBaseline(config, data, params, workdir)
