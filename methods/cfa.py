"""CFA: coupled-hypersphere-based feature adaptation (Lee, Lee, Song, "CFA: Coupled-hypersphere-based Feature
Adaptation for Target-Oriented Anomaly Localization", IEEE Access 2022, arXiv:2206.04325).

Algorithm (published defaults): backbone levels 1-3, each 3x3 average-pooled, bilinearly resized to level 1's grid
and concatenated (C channels); a patch descriptor φ = CoordConv 1x1 (C -> C // γ_d) adapts the features towards a
memory bank of patch features 𝒞 (M rows, never trained by the optimiser). With d² the squared distances of a
descriptor to the bank, sorted ascending, the loss is

    L_att = (1/ν) · mean(max(0, d²[:K] - r²)),    L_rep = (1/ν) · mean(max(0, r² - d²[K:K+J] - α)),

K = 3 attracting neighbours, J = 3 hard negatives, α = 0.1, ν = 1e-3, r a learnable radius initialised to 1e-5;
φ and r are trained with AdamW (lr 1e-3, weight decay 5e-4, amsgrad). Score: per patch the K nearest bank
distances d, weight = softmin(d)[0], score = weight · d[0]; bilinear upsampling, Gaussian blur σ = 4; image score =
max of the map.

Forms:
- ``offline`` (the official code): ``observe`` stores the backbone levels; ``consolidate`` builds a frozen bank =
  the mean descriptor map over all stored images under the initial (untrained) descriptor (M = h·w rows; γ_c > 1:
  K-means of those rows into (h·w) // γ_c centres), then trains φ and r for ``epochs`` epochs over the stored
  images in shuffled mini-batches of ``batch_size``, one AdamW step per mini-batch.
- ``online`` (the paper's natively streaming memory): the first image initialises the bank (its descriptor rows,
  or their K-means into (h·w) // γ_c centres); every observed batch then gets one AdamW step on its loss against
  the current bank, after which each of its images is absorbed into the bank: every bank row c_j moves towards its
  nearest descriptor row z* of that image, c_j <- c_j + β_t (z* - c_j).

Interpretations and choices:
- Hard negatives are ranks K..K+J-1 of the sorted distances (the official code slices ``[:, :, J:]``, which is
  right only when K == J). With fewer than K + J bank rows the available ranks are used (no repulsion term if
  there are at most K rows).
- Distances: the neighbours are searched with d² = |φ|² + |c|² - 2 φ·c clamped at 0 before any square root (the
  official code can take the sqrt of a negative); the K + J squared distances entering the loss are recomputed as
  |φ - c|² of the selected rows (exact, non-negative; same gradient as the official dense form, at a fraction of
  its cost).
- Offline: no epoch is selected by test performance (the official code reports the best of 30 epochs on the test
  set); exactly ``epochs`` epochs are trained. The shuffle order comes from a generator seeded by the run's seed;
  incomplete last batches are dropped as by the official loader, unless there is no full batch at all (then one
  partial batch per epoch). The stored data are the raw backbone levels (several times smaller than their
  concatenation, which is recomputed per mini-batch and is the same). A ``consolidate`` with no new images is a
  no-op; with new images the offline form is refitted from scratch on everything stored (same initial descriptor,
  fresh r and optimiser), so the model after N images does not depend on earlier checkpoints. ``score`` never
  trains: it uses the model of the last ``consolidate``.
- Online: the paper's memory update is a running average of each bank row's nearest features, β_t = 1 / (t + 1)
  with t the number of images absorbed so far (REFERENCE.md calls it an exponential moving average); a constant
  ``bank_momentum`` replaces β_t when set. The first image initialises the bank with the initial descriptor and
  counts as absorbed (t = 1); the following images of a batch, and of every later batch, are absorbed one after
  another with the descriptor *after* that batch's optimiser step, so the bank follows the adapted embedding.
  The optimiser state persists along the stream.
- K-means (γ_c > 1): oadbench's k-means (k-means++ seeding from the run's seed, one initialisation, at most 3000
  Lloyd iterations as in the official setting), on the run's device.
- Feature scale (``feature_scale``): the official code divides every level of its EfficientNet backbone by its
  channel count (and uses its WRN-50 / ResNet-18 / VGG features as they are); ``auto`` does the same by backbone
  family, so the default EfficientNet-Lite0 levels are divided by 24 / 40 / 112. This matters: the loss compares
  d² with r² and α in absolute units, and the CoordConv coordinates enter the descriptor at a fixed unit scale.
  Raw Lite0 levels give d² of several hundred to the nearest bank row, where r (~1e-3 per step) and α = 0.1 never
  act and the coordinates are drowned. On the synthetic capsule category (seed 0, full runs) raw levels gave
  0.74 image AUROC offline and 0.77 online after 100 images, divided ones 0.95 and 0.92.
  The official EfficientNet-B5 descriptor's doubled width (2·C outputs) is not reproduced: D' = C // γ_d.
- Descriptor weights are drawn from the run's seed (PyTorch's default Conv2d init under a forked RNG).
- Cold start (no bank yet): the patch score is the norm of the descriptor, so scores are finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oadbench.components import (
    FEATURE_SCALES,
    CoordConv2d,
    concat_levels,
    divides_by_channels,
    kmeans,
    nearest_neighbours,
    scale_levels,
    smallest_sq_distances,
    upsample_maps,
)
from oadbench.errors import ConfigError
from oadbench.method import Batch, Method, MethodContext, Scores, register_method, tensor_bytes


def soft_boundary_loss(d2: torch.Tensor, r: torch.Tensor, K: int, J: int, alpha: float, nu: float) -> torch.Tensor:
    """CFA's loss from squared distances ``d2`` (N, M) of N patches to M bank rows (any order): attraction of the
    K nearest beyond r², repulsion of the hard negatives at ranks K..K+J-1 inside r² - α, both scaled by 1/ν."""
    d2 = torch.topk(d2, min(K + J, d2.shape[1]), dim=1, largest=False).values  # ascending
    r2 = r.pow(2)
    loss = F.relu(d2[:, :K] - r2).mean() / nu
    negatives = d2[:, K:K + J]
    if negatives.shape[1] > 0:
        loss = loss + F.relu(r2 - negatives - alpha).mean() / nu
    return loss


@register_method("cfa")
class CFA(Method):
    description = "coupled-hypersphere feature adaptation to a patch memory (Lee et al., IEEE Access 2022)"
    needs_images = False  # features and image_size only

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (1, 2, 3)
        gamma_d: int = 1  # descriptor dimension = C // gamma_d
        gamma_c: int = 1  # bank size = h·w // gamma_c (K-means when > 1)
        K: int = 3  # attracting nearest neighbours (and neighbours of the score)
        J: int = 3  # hard negatives
        alpha: float = 0.1  # repulsion margin
        nu: float = 1e-3  # loss scale 1/ν
        r_init: float = 1e-5  # initial hypersphere radius
        lr: float = 1e-3
        weight_decay: float = 5e-4
        epochs: int = 30  # offline training epochs
        batch_size: int = 4  # offline training mini-batch
        sigma: float = 4.0  # Gaussian blur of the map, pixels
        bank_momentum: float | None = None  # online bank update rate; None: running average 1 / (t + 1)
        feature_scale: str = "auto"  # "channels": each level / its channel count; "none"; "auto": per backbone

        def __post_init__(self) -> None:
            if not self.layers:
                raise ConfigError("method.layers", "must name at least one backbone level")
            for key in ("gamma_d", "gamma_c", "K", "J", "epochs", "batch_size"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"method.{key}", f"must be >= 1, got {getattr(self, key)}")
            for key in ("nu", "lr"):
                if getattr(self, key) <= 0:
                    raise ConfigError(f"method.{key}", f"must be > 0, got {getattr(self, key)}")
            for key in ("alpha", "r_init", "weight_decay", "sigma"):
                if getattr(self, key) < 0:
                    raise ConfigError(f"method.{key}", f"must be >= 0, got {getattr(self, key)}")
            if self.feature_scale not in FEATURE_SCALES:
                raise ConfigError("method.feature_scale", f"unknown value {self.feature_scale!r}",
                                  allowed=FEATURE_SCALES)
            if self.bank_momentum is not None and not 0 < self.bank_momentum <= 1:
                raise ConfigError("method.bank_momentum", f"must be in (0, 1] or null, got {self.bank_momentum}")

    def __init__(self, config: Config, context: MethodContext):
        super().__init__(config, context)
        if context.mode not in ("online", "offline"):
            raise ConfigError("protocol.training", f"CFA has no '{context.mode}' form", allowed=["online", "offline"])
        self.in_channels = sum(context.channels)
        self.dim = self.in_channels // config.gamma_d
        if self.dim < 1:
            raise ConfigError("method.gamma_d", f"{config.gamma_d} leaves no descriptor channel of {self.in_channels}")
        self.divide_by_channels = divides_by_channels(config.feature_scale, context.backbone)
        self._init_model()
        self.bank: torch.Tensor | None = None  # (M, D') float32, never trained by the optimiser
        self.absorbed = 0  # online: images absorbed into the bank
        self.last_loss: float | None = None  # loss of the last optimiser step
        self.epoch_losses: list[float] = []  # offline: mean step loss of each epoch of the last fit
        self._stored: list[tuple[torch.Tensor, ...]] = []  # offline: backbone levels of each observed batch (CPU)
        self._n_stored = 0
        self._n_fitted = 0

    def _init_model(self) -> None:
        """Descriptor from the run's seed, radius r = r_init, a fresh AdamW."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.context.seed)
            descriptor = CoordConv2d(self.in_channels, self.dim, 1)
        self.descriptor = descriptor.to(self.device)
        self.r = nn.Parameter(torch.full((1,), float(self.config.r_init), device=self.device))
        self.optimizer = torch.optim.AdamW([*self.descriptor.parameters(), self.r], lr=self.config.lr,
                                           weight_decay=self.config.weight_decay, amsgrad=True)

    # ---------------------------------------------------------------------------------------------------------

    def embed(self, features: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        """Descriptors (B, D', h, w) of backbone levels (with grad if enabled)."""
        levels = scale_levels([f.to(self.device) for f in features], self.divide_by_channels)
        x = concat_levels(levels, mode="bilinear", pool=3)
        return self.descriptor(x)

    @staticmethod
    def rows(phi: torch.Tensor) -> torch.Tensor:
        """(B, D', h, w) -> (B·h·w, D')."""
        return phi.permute(0, 2, 3, 1).reshape(-1, phi.shape[1])

    def loss(self, phi: torch.Tensor) -> torch.Tensor:
        """The soft-boundary loss of descriptors ``phi`` (B, D', h, w) against the bank."""
        c = self.config
        d2 = smallest_sq_distances(self.rows(phi), self.bank, c.K + c.J)
        return soft_boundary_loss(d2, self.r, c.K, c.J, c.alpha, c.nu)

    def _step(self, phi: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(phi)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _cluster(self, rows: torch.Tensor) -> torch.Tensor:
        """The bank from candidate rows (h·w, D'): the rows themselves (γ_c = 1) or their K-means centres."""
        rows = rows.detach().float()
        k = max(1, rows.shape[0] // self.config.gamma_c)
        if self.config.gamma_c == 1 or k >= rows.shape[0]:
            return rows.clone()
        centres, _ = kmeans(rows, k, seed=self.context.seed, iters=3000)
        return centres

    # ---------------------------------------------------------------------------------------------------------

    def observe(self, batch: Batch) -> None:
        if self.context.mode == "offline":
            self._stored.append(tuple(f.detach().float().cpu() for f in batch.features))
            self._n_stored += batch.features[0].shape[0]
            return
        first = 0
        if self.bank is None:
            with torch.no_grad():
                self.bank = self._cluster(self.rows(self.embed([f[:1] for f in batch.features])))
            self.absorbed, first = 1, 1
        self.last_loss = float(self._step(self.embed(batch.features)))
        with torch.no_grad():
            phi = self.embed([f[first:] for f in batch.features]) if first < batch.features[0].shape[0] else None
            for i in range(0 if phi is None else phi.shape[0]):
                self._absorb(self.rows(phi[i:i + 1]))

    def _absorb(self, z: torch.Tensor) -> None:
        """Move every bank row towards its nearest row of one image's descriptors z (h·w, D')."""
        beta = self.config.bank_momentum if self.config.bank_momentum is not None else 1.0 / (self.absorbed + 1)
        _, idx = nearest_neighbours(self.bank, z, 1)
        self.bank += beta * (z[idx[:, 0]] - self.bank)
        self.absorbed += 1

    def consolidate(self) -> None:
        if self.context.mode != "offline" or self._n_stored == self._n_fitted:
            return
        self._init_model()  # refit from scratch on everything stored
        with torch.no_grad():  # bank: the mean descriptor map of the initial descriptor
            total = None
            for levels in self._stored:
                s = self.embed(levels).sum(0)
                total = s if total is None else total + s
            self.bank = self._cluster(self.rows((total / self._n_stored).unsqueeze(0)))
        images = [tuple(f[i:i + 1] for f in levels) for levels in self._stored for i in range(levels[0].shape[0])]
        n, bs = len(images), self.config.batch_size
        n_batches = n // bs if n >= bs else 1
        gen = torch.Generator().manual_seed(self.context.seed)
        self.epoch_losses = []
        for _ in range(self.config.epochs):
            order = torch.randperm(n, generator=gen).tolist()
            total_loss = torch.zeros((), device=self.device)
            for b in range(n_batches):
                chosen = [images[i] for i in order[b * bs:(b + 1) * bs]]
                levels = tuple(torch.cat([img[lvl] for img in chosen]) for lvl in range(len(chosen[0])))
                total_loss += self._step(self.embed(levels))
            self.epoch_losses.append(float(total_loss) / n_batches)
        self.last_loss = self.epoch_losses[-1] if self.epoch_losses else None
        self._n_fitted = self._n_stored

    # ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, batch: Batch) -> Scores:
        phi = self.embed(batch.features)
        b, _, h, w = phi.shape
        z = self.rows(phi)
        if self.bank is None:  # cold start: no memory yet
            patch = z.norm(dim=1)
        else:
            dist, _ = nearest_neighbours(z, self.bank, self.config.K)
            patch = F.softmin(dist, dim=1)[:, 0] * dist[:, 0]
        maps = upsample_maps(patch.reshape(b, h, w), batch.image_size, self.config.sigma)
        return Scores(image=maps.flatten(1).amax(1), maps=maps)

    def footprint(self) -> int:
        return tensor_bytes(self.bank, self.descriptor, self.r, *(f for levels in self._stored for f in levels))
