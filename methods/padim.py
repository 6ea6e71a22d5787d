"""PaDiM: a Gaussian per patch position (Defard, Setkov, Loesch, Audigier, "PaDiM: a Patch Distribution Modeling
Framework for Anomaly Detection and Localization", ICPR 2021, arXiv:2011.08785).

Algorithm (published defaults): backbone levels 1-3, each resized to level 1's grid (nearest) and concatenated; a
fixed random subset of ``n_features`` channels (the subset is part of the model, drawn from the run's seed); at
every position a Gaussian with mean μ and covariance Σ + ε·I (ε = 0.01); patch score = Mahalanobis distance to
its position's Gaussian; bilinear upsampling to the image, Gaussian blur σ = 4; image score = max of the map.

Forms:
- ``offline`` (the paper): ``observe`` stores the embeddings; ``consolidate`` computes μ and the unbiased Σ
  (divisor n - 1) in one two-pass computation (float64 unless ``stats_dtype=float32``, below).
- ``online``: per-position running mean and co-moment matrix merged batch by batch with Chan et al.'s parallel
  update (exact for any batch sizes, float64 by default); the factorisation is recomputed lazily before scoring
  when new images were observed since the last one.

Both forms keep the regularisation on the co-moment's diagonal: it holds max(n - 1, 1)·(Σ + ε·I), which the
consolidation factorises as it is (L = chol / √max(n - 1, 1)), with no covariance formed in between;
``statistics()`` gives Σ without ε.

Mahalanobis distance (``mahalanobis``): ``cholesky`` (default) keeps the Cholesky factor L of Σ + ε·I (computed
in the statistics' dtype, kept in float32) and scores a patch by ‖z‖ with L z = x - μ, a batched triangular solve;
no inverse is formed anywhere. ``inverse``, the published code's form (the paper's code inverts each covariance),
keeps (Σ + ε·I)⁻¹ = L⁻ᵀL⁻¹ in float32 and scores with a matrix product. Measured on the README's default run
(``benchmarks/bench_default_run.py``; 256 px, 4096 positions, d = 100, 2 cores): consolidation 0.22 s per
checkpoint against 0.57 s with the inverse (one batched Cholesky factorisation of the same matrices: 0.19 s),
scoring 10.9 s against 16.6 s for 1,260 images. What changed numerically: distances within float32 rounding of
the product's (maps within 2e-6 relative, both forms within 2e-6 of a float64 reference; ``tests/test_padim.py``);
the default run's final pixel metrics moved by < 1e-8, its image metrics not at all. Every committed PaDiM record
(grid and headline, 210) was regenerated with the solve: final metrics moved by at most 1.1e-5 (pixel AP; image
AUROC 6.7e-6), one leaderboard cell in its 4th decimal. No rank-one update of the factor between two scorings:
the regularised covariance of n + 1 images is (n-1)/n · (Σₙ + ε·I) + ε/n · I + a rank-one term, a full-rank
change whenever ε > 0, so the factor of a prequential stream is recomputed (O(d³) per position) at each scored
image: that factorisation is the floor of a prequential PaDiM run.

Precision: ``stats_dtype`` = ``float64`` (default) or ``float32`` for the mean, the co-moment and the Cholesky
factorisation: float32 halves their memory (P x d² floats: about 10 GB in float64 for WRN-50 at 256 px) and runs
at full speed on GPUs whose float64 rate is 1/32-1/64 of float32. Measured against float64 on the CPU
(``benchmarks/bench_padim_float32.py``; synthetic capsule, fabric, marble, washer at 128 px, 100 images, online
and offline): covariance relative error <= 2e-7, anomaly maps within 8e-5 relative, image AUROC, pixel AUROC
and AUPRO within 4e-6 of float64; Chan merges of 4000 images one at a time (random features, mean 5, unit
spread): covariance within 1.1e-6, scores within 2e-6. At its default the key is not part of a run's identity.

Interpretations: the paper fixes d for ResNet-18 (100 of 448) and WRN-50 (550 of 1792); for other backbones
``n_features=None`` keeps min(C, 100) channels. With n < 2 observed images the covariance is ε·I alone (n = 1) or
the identity with μ = 0 (n = 0, cold start: the score is the Euclidean norm of the embedding), so scores are
always finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from oadbench.components import concat_levels, upsample_maps
from oadbench.errors import ConfigError
from oadbench.method import OMIT_AT_DEFAULT, Batch, Method, MethodContext, Scores, register_method, tensor_bytes
from oadbench.validate import check_choice

PUBLISHED_DIMS = {1792: 550, 448: 100}  # WRN-50 and ResNet-18 channel totals of levels 1-3
STATS_DTYPES = {"float64": torch.float64, "float32": torch.float32}
MAHALANOBIS_FORMS = ("cholesky", "inverse")


@register_method("padim")
class PaDiM(Method):
    description = "Gaussian per patch position, Mahalanobis distance (Defard et al., ICPR 2021)"
    needs_images = False  # features and image_size only

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (1, 2, 3)
        n_features: int | None = None  # random channel subset; None: 550 for WRN-50, 100 for R18, else min(C, 100)
        epsilon: float = 0.01  # added to the covariance diagonal
        sigma: float = 4.0  # Gaussian blur of the map, pixels
        # mean, co-moment and Cholesky factorisation in float64 (default) or float32 (GPUs with weak float64)
        stats_dtype: str = field(default="float64", metadata=OMIT_AT_DEFAULT)
        # Mahalanobis distance by triangular solve with the Cholesky factor, or by the explicit precision matrix
        mahalanobis: str = field(default="cholesky", metadata=OMIT_AT_DEFAULT)

        def __post_init__(self) -> None:
            check_choice(self.stats_dtype, tuple(STATS_DTYPES), "method.stats_dtype")
            check_choice(self.mahalanobis, MAHALANOBIS_FORMS, "method.mahalanobis")
            if self.n_features is not None and self.n_features < 1:
                raise ConfigError("method.n_features", f"must be >= 1 or null, got {self.n_features}")
            if self.epsilon <= 0:
                raise ConfigError("method.epsilon", f"must be > 0, got {self.epsilon}")
            if self.sigma < 0:
                raise ConfigError("method.sigma", f"must be >= 0, got {self.sigma}")

    def __init__(self, config: Config, context: MethodContext):
        super().__init__(config, context)
        total = sum(context.channels)
        d = config.n_features if config.n_features is not None else PUBLISHED_DIMS.get(total, min(total, 100))
        if d > total:
            raise ConfigError("method.n_features", f"{d} exceeds the {total} channels of levels {config.layers}")
        gen = torch.Generator().manual_seed(context.seed)
        self.channel_index = torch.randperm(total, generator=gen)[:d].sort().values.to(self.device)
        starts = [sum(context.channels[:i]) for i in range(len(context.channels) + 1)]
        self.level_index = [self.channel_index[(self.channel_index >= a) & (self.channel_index < b)] - a
                            for a, b in zip(starts[:-1], starts[1:], strict=True)]  # the subset, level by level
        self.d = d
        self.dtype = STATS_DTYPES[config.stats_dtype]
        self.n = 0
        self.mean: torch.Tensor | None = None  # (P, d) in ``dtype``
        # (P, d, d) in ``dtype``: Σ (x - μ)(x - μ)ᵀ + ε·max(n - 1, 1)·I, the co-moment with the regularisation
        # kept on its diagonal: (n - 1)(Σ + ε·I), factorised as it is (:meth:`_ridge`)
        self.comoment: torch.Tensor | None = None
        self._stored: list[torch.Tensor] = []  # offline: (b, P, d) float32 embeddings
        # (P, d, d) float32: the Cholesky factor L of Σ + ε·I (lower), or (Σ + ε·I)⁻¹ with ``mahalanobis=inverse``
        self._factor: torch.Tensor | None = None
        self._stale = True

    # ---------------------------------------------------------------------------------------------------------

    def embed(self, batch: Batch) -> torch.Tensor:
        """(B, P, d) embeddings, P = h·w positions of level ``layers[0]``."""
        emb = concat_levels(batch.features, mode="nearest", select=self.level_index)  # = concat, then the subset
        self._grid = emb.shape[-2:]
        return emb.flatten(2).transpose(1, 2)

    def observe(self, batch: Batch) -> None:
        emb = self.embed(batch)
        if self.context.mode == "offline":
            self._stored.append(emb.float().cpu())
        else:
            self._merge(emb.to(self.dtype))
        self._stale = True

    def _merge(self, x: torch.Tensor) -> None:
        """Chan et al.'s pairwise update of (n, mean, co-moment) with a batch x (b, P, d), in place."""
        b = x.shape[0]
        m_b = x.mean(0)
        if self.n == 0:
            self.mean = m_b
            self.comoment = torch.zeros(x.shape[1], self.d, self.d, dtype=x.dtype, device=x.device)
        if b > 1:  # the batch's own co-moment (zero for a single image)
            y = (x - m_b).permute(1, 2, 0)
            self.comoment.baddbmm_(y, y.transpose(1, 2))
        if self.n > 0:
            n = self.n + b
            delta = (m_b - self.mean).unsqueeze(2)
            self.comoment.baddbmm_(delta, delta.transpose(1, 2), alpha=self.n * b / n)
            self.mean += delta.squeeze(2) * (b / n)
        self.n += b
        self.comoment.diagonal(dim1=1, dim2=2).add_(self._ridge(self.n) - self._ridge(self.n - b))

    def _ridge(self, n: int) -> float:
        """What the co-moment of ``n`` images keeps on its diagonal: ε·max(n - 1, 1), 0 for none, so that it is
        max(n - 1, 1)·(Σ + ε·I) (for n = 1: ε·I)."""
        return self.config.epsilon * max(n - 1, 1) if n else 0.0

    def consolidate(self) -> None:
        if self.context.mode == "offline" and self._stale and self._stored:
            self.n = sum(b.shape[0] for b in self._stored)
            P = self._stored[0].shape[1]
            self.mean = torch.empty(P, self.d, dtype=self.dtype, device=self.device)
            self.comoment = torch.empty(P, self.d, self.d, dtype=self.dtype, device=self.device)
            for s in range(0, P, 512):  # two-pass mean / co-moment, a block of positions at a time
                block = torch.cat([b[:, s:s + 512] for b in self._stored]).to(self.device, self.dtype)
                mean = block.mean(0)
                y = (block - mean).permute(1, 2, 0)
                self.mean[s:s + 512] = mean
                torch.bmm(y, y.transpose(1, 2), out=self.comoment[s:s + 512])
            self.comoment.diagonal(dim1=1, dim2=2).add_(self._ridge(self.n))
        self._update_factor()

    def statistics(self) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(n, mean (P,d), covariance (P,d,d) without ε) in the statistics' dtype, after consolidating."""
        self.consolidate()
        if self.n == 0:
            return 0, None, None
        cov = self.comoment.clone()
        cov.diagonal(dim1=1, dim2=2).sub_(self._ridge(self.n))
        return self.n, self.mean, cov.div_(max(self.n - 1, 1))

    def _update_factor(self) -> None:
        if not self._stale:
            return
        if self.context.mode == "offline" and self._stored and self.mean is None:
            self.consolidate()
            return
        if self.n == 0:
            self._factor = None
        else:
            P = self.comoment.shape[0]
            if self._factor is None or self._factor.shape[0] != P:
                self._factor = torch.empty(P, self.d, self.d, device=self.device)
            inverse = self.config.mahalanobis == "inverse"
            m = max(self.n - 1, 1)  # the co-moment is m·(Σ + ε·I): L = chol(co-moment) / √m
            for s in range(0, P, 512):  # blocks of positions keep the temporaries small
                factor = torch.linalg.cholesky(self.comoment[s:s + 512])
                if inverse:
                    self._factor[s:s + 512] = torch.cholesky_inverse(factor).mul_(m)
                else:  # scaled in place in the statistics' dtype, then rounded once to float32
                    self._factor[s:s + 512] = factor.mul_(m ** -0.5)
        self._stale = False

    # ---------------------------------------------------------------------------------------------------------

    def score(self, batch: Batch) -> Scores:
        emb = self.embed(batch).float()
        if self._stale:
            self.consolidate()
        grid = self.distances(emb).reshape(emb.shape[0], *self._grid)
        maps = upsample_maps(grid, batch.image_size, self.config.sigma)
        return Scores(image=maps.flatten(1).amax(1), maps=maps)

    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances (B, P) of float32 embeddings (B, P, d) to their positions' Gaussians, as of the
        last consolidation; before any observed image, their Euclidean norms."""
        if self._factor is None:  # cold start: no Gaussian yet
            return emb.norm(dim=-1)
        if self.config.mahalanobis == "inverse":
            diff = (emb - self.mean.float()).transpose(0, 1)  # (P, B, d)
            m2 = torch.einsum("pbi,pbi->pb", torch.bmm(diff, self._factor), diff)
            return m2.clamp_min(0).sqrt().transpose(0, 1)
        diff = (emb - self.mean.float()).permute(1, 2, 0)  # (P, d, B)
        z = torch.linalg.solve_triangular(self._factor, diff, upper=False)  # L z = x - μ
        return z.square().sum(1).sqrt().transpose(0, 1)

    def footprint(self) -> int:
        return tensor_bytes(self.mean, self.comoment, self._factor, self.channel_index, *self._stored)
