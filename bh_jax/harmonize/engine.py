"""Many slices at once: fixed-size batches, vmap over slices, sharded over devices.

One compiled program serves a whole run: slices from any number of subjects
are packed into batches of `batch_size` (the last one filled up with the
first slices again, `bh_jax.batching.fixed_batches`), so nothing recompiles
per subject.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import numpy as np

from bh_jax.batching import fixed_batches
from bh_jax.flows.model import FlowModel
from bh_jax.harmonize.calibration import Calibrator
from bh_jax.harmonize.settings import SolverConfig, Weights
from bh_jax.harmonize.solvers import solver_fn
from bh_jax.sharding import check_batch_size, data_mesh, replicate, shard_batch


class Harmonizer:
    """A trained flow and solver settings, compiled once for [batch_size, H, W] batches.

    Attributes:
      compilations: how many times the batch program was traced (1 after the
        first batch, whatever the number of subjects; tests check this).
      calibrator: the intensity calibration of settings.init = 'calibrated'
        (else None).
    """

    def __init__(self, model: FlowModel, params: dict, settings: SolverConfig,
                 batch_size: int = 16, devices=None):
        self.model = model
        self.settings = settings
        self.batch_size = batch_size
        self.mesh = data_mesh(devices)
        check_batch_size(self.mesh, batch_size)
        self.params = replicate(self.mesh, params)
        self.compilations = 0
        self.calibrator = (Calibrator(model, self.params, settings.calibration, devices)
                           if settings.init == "calibrated" else None)
        solve = partial(solver_fn(settings), model, settings)

        def run(params, weights, sources, brains, inits):
            self.compilations += 1  # runs only while tracing
            return jax.vmap(solve, in_axes=(None, None, 0, 0, 0))(params, weights, sources,
                                                                  brains, inits)

        self._run = jax.jit(run)

    def memory_mib(self) -> dict[str, float]:
        """XLA's memory plan of the batch program, MiB per device (to choose a batch size).

        arguments: parameters and one batch; temporaries: the flow's
        intermediate activations and the solver state; outputs: results and
        diagnostics. Compiles the program once more to ask XLA (the trace is
        shared with later runs, so `compilations` counts it once).
        """
        h, w = self.model.height, self.model.width
        batch = [shard_batch(self.mesh, np.zeros((self.batch_size, h, w), np.float32))
                 for _ in range(3)]
        stats = self._run.lower(self.params, self.settings.weights,
                                *batch).compile().memory_analysis()
        mib = 2.0**20
        return {"arguments": stats.argument_size_in_bytes / mib,
                "temporaries": stats.temp_size_in_bytes / mib,
                "outputs": stats.output_size_in_bytes / mib}

    def harmonize_slices(self, sources: np.ndarray, brains: np.ndarray, inits: np.ndarray,
                         on_batch: Callable[[int], None] | None = None,
                         weights: Weights | None = None
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Harmonizes [N, H, W] slices in fixed-size batches.

        Args:
          sources: float [N, H, W] in [0, 1].
          brains: bool [N, H, W] brain masks.
          inits: float [N, H, W] starting images x_init.
          on_batch: called with the number of real slices after each batch.
          weights: b1, b2, alpha for this call (default: the settings'); other
            values reuse the compiled program.
        Returns:
          (harmonized [N, H, W] float32, {name: [N] per-slice diagnostics}).
        """
        n = len(sources)
        h, w = self.model.height, self.model.width
        if sources.shape[1:] != (h, w):
            raise ValueError(f"slices are {sources.shape[1:]}, the model expects {(h, w)}")
        weights = self.settings.weights if weights is None else weights
        outputs, diagnostics = [], []
        for index, valid in fixed_batches(n, self.batch_size):
            batch = [shard_batch(self.mesh, np.asarray(a[index], np.float32))
                     for a in (sources, brains, inits)]
            x_h, diag = self._run(self.params, weights, *batch)
            outputs.append(np.asarray(x_h)[:valid])
            diagnostics.append({k: np.asarray(v)[:valid] for k, v in diag.items()})
            if on_batch:
                on_batch(valid)
        if not outputs:
            return np.zeros((0, h, w), np.float32), {}
        return (np.concatenate(outputs),
                {k: np.concatenate([d[k] for d in diagnostics]) for k in diagnostics[0]})
