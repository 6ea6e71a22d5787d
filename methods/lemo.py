"""LeMO: learnable memory, learned fully online from the stream (Gao, Luo, Shen, Zhang, "Towards Total Online
Unsupervised Anomaly Detection and Localization in Industrial Vision", arXiv:2305.15652, 2023).

No official code exists; this is oadbench's reference implementation. The method as the paper describes it:

- Features: frozen backbone levels 1-3, each position's 3x3 neighbourhood average-pooled, resized (bilinear) to
  level 1's grid and concatenated (C channels: 1792 for WRN-50, 176 for EfficientNet-Lite0).
- Patch adapter: CoordConv (two coordinate channels in [-1, 1] appended) followed by a learnable 1x1 convolution
  to D' channels (``out_dim``; None = D' = C, the paper's D' = 1792 for WRN-50).
- Learnable memory: K prototypes (``n_prototypes`` = 10) of dimension D', initialised orthogonally, or by
  K-means on the adapted patch features of the first observed image (``init: kmeans``).
- Loss ("AnoNCE"): for each adapted patch feature z, the q nearest prototypes are positives and the next w are
  negatives; distances relaxed by a margin r, d' = max(||z - m|| - r, 0); InfoNCE with temperature τ,
  L = -log Σ₊ exp(-d'/τ) / Σ₊∪₋ exp(-d'/τ), computed with logsumexp, averaged over patches. The published
  transcription writes exp(+d/τ), which would push positives away; we use the sign that pulls them closer.
- Online optimisation: adapter and memory updated jointly, one AdamW step per observed batch (batch 1 in the
  paper's protocol).
- Memory update ``feature_enhanced`` (the paper's best variant): after each step every patch of the image is
  assigned to its nearest prototype; a cluster smaller than ``small_cluster_ratio`` x the average cluster size
  is emptied and its prototype replaced by one half of a 2-means split of the largest cluster (the largest
  cluster's prototype becomes the other half); repeated until no cluster is small (at most 2K replacements).
- Scoring: per patch, the distances to the ``score_k`` = 3 nearest prototypes, weight = softmin(d)[0], score =
  weight x d₁; bilinear upsampling to the image, Gaussian blur σ = 4; image score = max of the map.
- Offline form: the same model trained for ``epochs`` passes over the stored training features (shuffled,
  mini-batches of ``batch_size``, the same step and memory update).

Defaults (oadbench's, not the paper's; selected by the pre-registered ablation of the README's LeMO section,
``leaderboards/lemo_ablation/``): ``loss: anonce_compact`` (λ = 1), ``n_prototypes`` = 2000 kept by the
``coverage`` update, ``normalize: false`` on features divided by their channel count (``feature_scale:
channels``), ``adapter: frozen`` (nothing is trained but the memory); τ = 0.1, q = w = 3, lr 1e-3.

Measured status (online_cold_start, 256 px, default backbone, seeds 0-2, final image AUROC): 0.957 mean over the
four synthetic categories, 0.765 on MTD, 0.936 on MVTec AD transistor, no collapse; CFA online 0.939 / 0.788 /
0.920. The paper's configuration: 0.489 / 0.530 / 0.341, collapsing on five of the six. Every learned
adapter the ablation tried (lr 1e-3, 1e-4) collapsed the adapted features on MTD's 761-image stream; lr 1e-5 did
not (mean 0.911 against the default's 0.921).

The paper's described configuration, literally (unnormalised distances, τ = 1, the sign fixed):
``method=lemo method.loss=anonce method.normalize=false method.tau=1 method.n_prototypes=10
method.update=feature_enhanced method.feature_scale=none method.adapter=learned``.

Variants (each a config value; the ablation in the README measured them):

- ``loss``: ``anonce`` (above); ``anonce_compact``: AnoNCE + λ · mean max(d₁ - r, 0)² with d₁ the distance to
  the nearest prototype (``compact_weight`` = λ; zero for a patch on its prototype): AnoNCE alone is purely
  relative, nothing keeps normal patches close in absolute distance, yet the score *is* an absolute distance;
  ``attract_repel`` (CFA-style): mean over the q nearest of max(d - r, 0)² plus mean over the next w of
  max(r + α - d, 0)² (``repel_margin`` = α).
- ``n_prototypes`` K: any K ≥ q + w. The orthogonal initialisation draws blocks: each block of D' rows is the
  Q of the QR decomposition of its own Gaussian D' x D' matrix (positive diagonal of R), transposed; K > D' takes
  ⌈K / D'⌉ blocks and keeps the first K rows. Rows are orthonormal within a block, independent across blocks
  (K ≤ D' is exactly the paper's single orthonormal set). ``init: kmeans`` needs K ≤ the patches of one image.
- ``update``: ``feature_enhanced`` (the paper); ``odc`` (Online Deep Clustering, Zhan et al., CVPR 2020, where
  the update comes from: assignment by cosine similarity whatever ``normalize`` says, an absolute minimum
  cluster size ``min_cluster_size``, the small cluster's prototype and the largest cluster's become the two
  2-means centres, i.e. the means of the halves); ``coverage`` (a form that does not starve rare normal
  structure, below); ``parameter`` (memory updated by the loss only); ``frozen`` (the initial memory).
- ``coverage``: every prototype keeps its usage, an exponential moving average (rate ``usage_decay`` = ρ) of
  the share of each observed image's patches for which it is the nearest. A prototype whose usage falls below
  ``dead_usage`` / K is dead; after each image the dead prototypes are re-seeded at that image's worst-covered
  patches (the largest distances to their nearest prototype, one patch each) and start with usage 1 / K. The
  paper's rule empties a cluster that is small *in the current image*, which is exactly the cluster of rare but
  normal structure (an edge, a print, a corner); here a prototype survives as long as it is used now and then,
  and new prototypes go where the memory covers the data worst. The usage starts at 0, so the first image
  re-seeds every prototype it does not use (the orthogonal noise then only decides which ones).
- ``adapter``: ``learned`` (the paper's CoordConv 1x1); ``residual`` (identity-initialised: z = x + CoordConv(x)
  with the convolution's weights and bias zero at the start; needs D' = C); ``frozen`` (no adapter: z = x, the
  pooled features themselves, nothing trained but the memory). ``lr_adapter`` and ``lr_memory`` (None = ``lr``)
  set separate learning rates.
- ``feature_scale``: ``none`` (the raw levels), ``channels`` (each level divided by its channel count, as CFA's
  official code does for EfficientNet features), ``auto`` (``channels`` for EfficientNet backbones, else
  ``none``). ``pool_padding``: ``zeros`` (the 3x3 average counts the zero padding, pulling border positions
  towards 0, as the reference implementations) or ``valid``.
- ``normalize``: adapted features and prototypes L2-normalised, distances on the unit sphere (0..2).

Interpretations and choices where the paper is silent (each configurable):

- τ (``tau``) is unpublished; margin r (``margin``) = 0; q = w = 3 as in the public reimplementation.
- Optimiser: AdamW, lr 1e-3, weight decay 5e-4 (adapter only; decay would shrink prototypes), amsgrad (CFA's
  settings, used by the reimplementation). Optimiser moments of a replaced prototype are reset.
- The memory updates run per image, after the batch's optimiser step, on the adapted features after the step.
  When an image has fewer patches than prototypes, ``feature_enhanced`` and ``odc`` skip it.
- Before any observation (cold start) the initial memory and the untrained adapter already give finite scores;
  with ``init: kmeans`` the orthogonal memory stands in until the first image arrives.
- Computation (not a modelling choice): every loss reads only each patch's q + w nearest distances, so the
  step finds them without gradient and recomputes just those as |z - m|² (the gradient is the dense form's,
  the backward N x (q + w) x D instead of N x K x D); assignment, coverage and scoring use the exact chunked
  nearest-neighbour search. Float rounding differs from the dense N x K form the LeMO ablation's records were
  run with, and an online run amplifies rounding through the discrete re-seeding: the same seed's records agree
  in distribution, not to the last digit (synthetic capsule, 128 px, seed 0: final image AUROC 0.808 dense,
  0.799 now; at 256 px with the ablation's schedule, seeds 0-2: 0.943 / 0.954 / 0.951 dense, 0.943 / 0.953 /
  0.953 now, mean 0.949 both; observe 141 → 45 ms, score 78 → 15 ms per image at 128 px on one core).

Diagnostics (``diagnostics()``, recorded at every checkpoint): ``loss`` (mean of the last 10 steps),
``feature_rank`` (effective rank, exp of the entropy of the normalised singular values, of the adapted patch
features of the last observed image), ``cluster_entropy`` (entropy of that image's cluster sizes over log K: 1 =
every prototype used equally, 0 = one prototype takes every patch), ``cluster_min`` / ``cluster_max`` (its
smallest and largest cluster, patches), ``prototypes_used`` (prototypes nearest to at least one of its patches),
``replacements`` (prototypes re-seeded so far) and ``nearest_distance`` (mean distance of its patches to their
nearest prototype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oadbench.components import (
    FEATURE_SCALES,
    POOL_PADDINGS,
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
from oadbench.validate import check_choice, check_int

LOSSES = ("anonce", "anonce_compact", "attract_repel")
UPDATES = ("feature_enhanced", "odc", "coverage", "parameter", "frozen")
ADAPTERS = ("learned", "residual", "frozen")
INITS = ("orthogonal", "kmeans")
RECENT = 10  # steps in the ``loss`` diagnostic


def orthogonal_memory(k: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(k, dim) rows in blocks of ``dim`` orthonormal rows: each block is Q of the QR decomposition of its own
    Gaussian (dim, dim) matrix (positive diagonal of R), transposed; the first ``k`` rows of ⌈k / dim⌉ blocks.
    For k <= dim this is one orthonormal set (Q of a Gaussian dim x k matrix spans the same distribution)."""
    blocks, rows = [], 0
    while rows < k:
        n = min(dim, k - rows)
        q, r = torch.linalg.qr(torch.randn(dim, n, generator=generator, dtype=torch.float64))
        blocks.append((q * torch.sign(torch.diagonal(r)).unsqueeze(0)).T)
        rows += n
    return torch.cat(blocks).contiguous().float()


def anonce_loss(distances: torch.Tensor, q: int, w: int, tau: float, margin: float) -> torch.Tensor:
    """AnoNCE over distances (N, K) to the prototypes: -log Σ₊ exp(-d'/τ) / Σ₊∪₋ exp(-d'/τ) with the q nearest as
    positives and the next w as negatives, d' = max(d - margin, 0); mean over the N patches."""
    nearest = torch.topk(distances, q + w, dim=1, largest=False).values
    logits = -torch.clamp(nearest - margin, min=0.0) / tau
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits[:, :q], dim=1)).mean()


def compactness(distances: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over patches of max(d₁ - margin, 0)², d₁ the distance to the nearest prototype (N, K) -> ()."""
    return torch.clamp(distances.min(dim=1).values - margin, min=0.0).pow(2).mean()


def attract_repel_loss(distances: torch.Tensor, q: int, w: int, margin: float, repel_margin: float) -> torch.Tensor:
    """CFA-style: mean over the q nearest of max(d - r, 0)² + mean over the next w of max(r + α - d, 0)²."""
    nearest = torch.topk(distances, q + w, dim=1, largest=False).values
    attract = torch.clamp(nearest[:, :q] - margin, min=0.0).pow(2).mean()
    repel = torch.clamp(margin + repel_margin - nearest[:, q:], min=0.0).pow(2).mean()
    return attract + repel


def effective_rank(z: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of ``z`` (N, D) (Roy and Vetterli, 2007)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(1e-30)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@register_method("lemo")
class LeMO(Method):
    description = "learnable memory from orthogonal noise, contrastive loss, fully online (Gao et al., 2023)"
    needs_images = False  # features and image_size only

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (1, 2, 3)
        pool: int = 3  # local neighbourhood (average pooling) of each level
        pool_padding: str = "zeros"  # zeros | valid
        feature_scale: str = "channels"  # none | channels | auto
        out_dim: int | None = None  # D' of the adapter; None = the concatenated channels C
        adapter: str = "frozen"  # learned | residual | frozen
        n_prototypes: int = 2000  # K
        init: str = "orthogonal"  # orthogonal | kmeans (on the first observed image)
        loss: str = "anonce_compact"  # anonce | anonce_compact | attract_repel
        q: int = 3  # positives: the q nearest prototypes
        w: int = 3  # negatives: the next w
        margin: float = 0.0  # r
        tau: float = 0.1  # temperature (anonce, anonce_compact)
        compact_weight: float = 1.0  # λ (anonce_compact)
        repel_margin: float = 0.1  # α (attract_repel)
        normalize: bool = False  # distances on the unit sphere
        update: str = "coverage"  # feature_enhanced | odc | coverage | parameter | frozen
        small_cluster_ratio: float = 0.5  # feature_enhanced: clusters below this fraction of the average size
        min_cluster_size: int = 20  # odc: clusters below this many patches are re-seeded
        usage_decay: float = 0.2  # coverage: ρ of the usage average
        dead_usage: float = 0.01  # coverage: usage below this / K is dead
        lr: float = 1e-3
        lr_adapter: float | None = None  # None = lr
        lr_memory: float | None = None  # None = lr
        weight_decay: float = 5e-4
        amsgrad: bool = True
        epochs: int = 10  # offline form: passes over the training set
        batch_size: int = 1  # offline form: images per step
        score_k: int = 3  # prototypes in the softmin weighting of the score
        sigma: float = 4.0

        def __post_init__(self) -> None:
            check_choice(self.loss, LOSSES, "method.loss")
            check_choice(self.update, UPDATES, "method.update")
            check_choice(self.adapter, ADAPTERS, "method.adapter")
            check_choice(self.init, INITS, "method.init")
            check_choice(self.feature_scale, FEATURE_SCALES, "method.feature_scale")
            check_choice(self.pool_padding, POOL_PADDINGS, "method.pool_padding")
            for key in ("q", "w", "n_prototypes", "epochs", "batch_size", "score_k", "pool", "min_cluster_size"):
                check_int(getattr(self, key), f"method.{key}", lo=1)
            if self.n_prototypes < self.q + self.w:
                raise ConfigError("method.n_prototypes",
                                  f"K = {self.n_prototypes} must be >= q + w = {self.q + self.w}")
            if self.score_k > self.n_prototypes:
                raise ConfigError("method.score_k", f"must be <= n_prototypes ({self.n_prototypes})")
            for key in ("tau", "lr", "compact_weight"):
                if not getattr(self, key) > 0:
                    raise ConfigError(f"method.{key}", f"must be > 0, got {getattr(self, key)}")
            for key in ("lr_adapter", "lr_memory"):
                if getattr(self, key) is not None and not getattr(self, key) > 0:
                    raise ConfigError(f"method.{key}", f"must be > 0 or null, got {getattr(self, key)}")
            for key in ("margin", "repel_margin", "weight_decay"):
                if getattr(self, key) < 0:
                    raise ConfigError(f"method.{key}", f"must be >= 0, got {getattr(self, key)}")
            if not 0 <= self.small_cluster_ratio < 1:
                raise ConfigError("method.small_cluster_ratio", f"must be in [0, 1), got {self.small_cluster_ratio}")
            if not 0 < self.usage_decay <= 1:
                raise ConfigError("method.usage_decay", f"must be in (0, 1], got {self.usage_decay}")
            if not 0 < self.dead_usage < 1:
                raise ConfigError("method.dead_usage", f"must be in (0, 1), got {self.dead_usage}")
            if self.out_dim is not None and self.out_dim < 1:
                raise ConfigError("method.out_dim", f"must be >= 1 or null, got {self.out_dim}")

    def __init__(self, config: Config, context: MethodContext):
        super().__init__(config, context)
        in_dim = sum(context.channels)
        out_dim = config.out_dim or in_dim
        if config.adapter != "learned" and out_dim != in_dim:
            raise ConfigError("method.out_dim", f"adapter '{config.adapter}' keeps the {in_dim} input channels, "
                              f"got out_dim = {out_dim}")
        patches = (context.image_size // context.strides[0]) ** 2
        if config.init == "kmeans" and config.n_prototypes > patches:
            raise ConfigError("method.n_prototypes", f"init 'kmeans' takes the K prototypes from the first image's "
                              f"{patches} patches (image_size {context.image_size}, stride {context.strides[0]}); "
                              f"K = {config.n_prototypes} is more")
        self.divide_by_channels = divides_by_channels(config.feature_scale, context.backbone)
        gen = torch.Generator().manual_seed(context.seed)
        self.adapter: nn.Module | None = None
        if config.adapter != "frozen":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(context.seed)
                self.adapter = CoordConv2d(in_dim, out_dim, 1).to(self.device)
            if config.adapter == "residual":
                with torch.no_grad():
                    self.adapter.conv.weight.zero_()
                    self.adapter.conv.bias.zero_()
        self.memory = nn.Parameter(orthogonal_memory(config.n_prototypes, out_dim, gen).to(self.device),
                                   requires_grad=config.update != "frozen")
        groups = []
        if self.adapter is not None:
            groups.append({"params": list(self.adapter.parameters()), "weight_decay": config.weight_decay,
                           "lr": config.lr_adapter or config.lr})
        if config.update != "frozen":
            groups.append({"params": [self.memory], "weight_decay": 0.0, "lr": config.lr_memory or config.lr})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, amsgrad=config.amsgrad) if groups else None
        self.usage = torch.zeros(config.n_prototypes, device=self.device)  # coverage update
        self._kmeans_pending = config.init == "kmeans"
        self._gen = gen  # offline shuffling
        self._stored: list[torch.Tensor] = []  # offline: concatenated backbone features, CPU
        self._trained_on = 0
        self._last: torch.Tensor | None = None  # adapted patches of the last observed image (diagnostics)
        self.steps = 0
        self.losses: list[float] = []
        self.replacements = 0

    # ---------------------------------------------------------------------------------------------------------

    def _features(self, batch: Batch) -> torch.Tensor:
        levels = scale_levels([f.to(self.device) for f in batch.features], self.divide_by_channels)
        return concat_levels(levels, mode="bilinear", pool=self.config.pool, padding=self.config.pool_padding)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B,C,h,w) -> adapted patch features (B·h·w, D'), normalised if configured."""
        if self.adapter is None:
            y = x
        else:
            y = self.adapter(x)
            if self.config.adapter == "residual":
                y = x + y
        z = y.permute(0, 2, 3, 1).reshape(-1, self.memory.shape[1])
        return F.normalize(z, dim=1) if self.config.normalize else z

    def _prototypes(self) -> torch.Tensor:
        return F.normalize(self.memory, dim=1) if self.config.normalize else self.memory

    def _nearest(self, z: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (N, n) and indices (N, n) of each patch's ``n`` nearest prototypes, nearest first."""
        return nearest_neighbours(z, self._prototypes(), n)

    def _loss(self, d: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.loss == "attract_repel":
            return attract_repel_loss(d, c.q, c.w, c.margin, c.repel_margin)
        loss = anonce_loss(d, c.q, c.w, c.tau, c.margin)
        if c.loss == "anonce_compact":
            loss = loss + c.compact_weight * compactness(d, c.margin)
        return loss

    def observe(self, batch: Batch) -> None:
        x = self._features(batch)
        if self.context.mode == "offline":
            self._stored.append(x.detach().cpu())
            return
        self._step(x)

    def _step(self, x: torch.Tensor) -> None:
        """One optimisation step on a batch of backbone features, then the memory update, image by image."""
        if self._kmeans_pending:
            self._init_kmeans(x[:1])
        if self.optimizer is not None:
            if self.adapter is not None:
                self.adapter.train()
            # every loss reads only the q + w nearest distances, so only those carry gradient
            d2 = smallest_sq_distances(self._adapt(x), self._prototypes(), self.config.q + self.config.w)
            loss = self._loss(d2.clamp_min(1e-12).sqrt())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.losses.append(float(loss.detach()))
        self.steps += 1
        with torch.no_grad():
            for image in x:
                z = self._adapt(image.unsqueeze(0))
                if self.config.update == "feature_enhanced":
                    self._split_update(z, self.config.small_cluster_ratio * z.shape[0] / self.config.n_prototypes,
                                       cosine=False)
                elif self.config.update == "odc":
                    self._split_update(z, float(self.config.min_cluster_size), cosine=True)
                elif self.config.update == "coverage":
                    self._coverage_update(z)
                self._last = z

    @torch.no_grad()
    def _init_kmeans(self, x: torch.Tensor) -> None:
        z = self._adapt(x)
        centroids, _ = kmeans(z, self.config.n_prototypes, seed=self.context.seed)
        self.memory.copy_(F.normalize(centroids, dim=1) if self.config.normalize else centroids)
        self._kmeans_pending = False

    def _assign(self, z: torch.Tensor, cosine: bool) -> torch.Tensor:
        if cosine:
            return (F.normalize(z, dim=1) @ F.normalize(self.memory, dim=1).T).argmax(1)
        return self._nearest(z, 1)[1][:, 0]

    @torch.no_grad()
    def _split_update(self, z: torch.Tensor, threshold: float, cosine: bool) -> None:
        """Re-seed prototypes whose clusters in this image have fewer than ``threshold`` patches with the 2-means
        halves of the largest cluster, until none is small (at most 2K replacements)."""
        k = self.config.n_prototypes
        if z.shape[0] < k:
            return
        ones = torch.ones(z.shape[0], dtype=torch.long, device=z.device)
        for _ in range(2 * k):
            labels = self._assign(z, cosine)
            sizes = torch.zeros(k, dtype=torch.long, device=z.device).scatter_add_(0, labels, ones)
            small = sizes < threshold
            # one host round trip per iteration for all the loop decides on: whether a cluster is small, the
            # smallest small one and the largest (the lowest index on ties), and the largest one's size
            found, target, largest, count = torch.stack([
                small.any().long(), torch.where(small, sizes, z.shape[0] + 1).argmin(), sizes.argmax(), sizes.max(),
            ]).tolist()
            if not found:
                return
            if count < 2:
                return
            # the largest cluster's patches in their order, gathered without a boolean mask (a second round trip)
            members = z.index_select(0, torch.argsort((labels != largest).to(torch.uint8), stable=True)[:count])
            halves, _ = kmeans(members, 2, seed=self.context.seed + self.replacements)
            if self.config.normalize:
                halves = F.normalize(halves, dim=1)
            self.memory[largest] = halves[0]
            self.memory[target] = halves[1]
            self._reset_moments([largest, target])
            self.replacements += 1

    @torch.no_grad()
    def _coverage_update(self, z: torch.Tensor) -> None:
        """Usage average of every prototype; dead ones re-seeded at this image's worst-covered patches."""
        k = self.config.n_prototypes
        nearest, labels = (t[:, 0] for t in self._nearest(z, 1))
        counts = torch.zeros(k, dtype=torch.long, device=z.device).scatter_add_(0, labels, torch.ones_like(labels))
        share = counts.float() / z.shape[0]
        rho = self.config.usage_decay
        self.usage.mul_(1.0 - rho).add_(rho * share)
        dead = torch.nonzero(self.usage < self.config.dead_usage / k).flatten()[: z.shape[0]]
        rows = dead.tolist()  # the image's one host round trip, right after nonzero's: nothing is queued behind it
        if not rows:
            return
        worst = torch.topk(nearest, len(rows)).indices
        self.memory[dead] = F.normalize(z[worst], dim=1) if self.config.normalize else z[worst]
        self.usage[dead] = 1.0 / k
        self._reset_moments(rows)
        self.replacements += len(rows)

    def _reset_moments(self, rows: list[int]) -> None:
        state = self.optimizer.state.get(self.memory) if self.optimizer is not None else None
        if not state:
            return
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0

    def consolidate(self) -> None:
        if self.context.mode != "offline" or self._trained_on == len(self._stored):
            return
        data = torch.cat(self._stored)
        bs = self.config.batch_size
        with torch.enable_grad():  # also when reached from score(), which runs without gradients
            for _ in range(self.config.epochs):
                order = torch.randperm(data.shape[0], generator=self._gen)
                for s in range(0, data.shape[0], bs):
                    self._step(data[order[s:s + bs]].to(self.device))
        self._trained_on = len(self._stored)

    # ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, batch: Batch) -> Scores:
        if self.context.mode == "offline" and self._trained_on != len(self._stored):
            self.consolidate()
        x = self._features(batch)
        n, _, h, w = x.shape
        was_training = self.adapter.training if self.adapter is not None else False
        if self.adapter is not None:
            self.adapter.eval()
        z = self._adapt(x)
        if self.adapter is not None:
            self.adapter.train(was_training)
        d, _ = self._nearest(z, self.config.score_k)
        patch = torch.softmax(-d, dim=1)[:, 0] * d[:, 0]
        maps = upsample_maps(patch.view(n, h, w), batch.image_size, self.config.sigma)
        return Scores(image=maps.flatten(1).amax(1), maps=maps)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        out: dict[str, float] = {"replacements": float(self.replacements)}
        if self.losses:
            recent = self.losses[-RECENT:]
            out["loss"] = sum(recent) / len(recent)
        if self._last is not None:
            z = self._last
            k = self.config.n_prototypes
            nearest, labels = (t[:, 0] for t in self._nearest(z, 1))
            sizes = torch.bincount(labels, minlength=k).double()
            p = sizes[sizes > 0] / sizes.sum()
            out.update({
                "feature_rank": effective_rank(z),
                "cluster_entropy": float(-(p * p.log()).sum() / math.log(k)),
                "cluster_min": float(sizes.min()),
                "cluster_max": float(sizes.max()),
                "prototypes_used": float((sizes > 0).sum()),
                "nearest_distance": float(nearest.mean()),
            })
        return out

    def footprint(self) -> int:
        return tensor_bytes(self.adapter, self.memory, *self._stored)


__all__ = ["LeMO", "anonce_loss", "attract_repel_loss", "compactness", "effective_rank", "orthogonal_memory"]
