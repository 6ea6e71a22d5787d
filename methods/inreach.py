"""InReaCh and Online-InReaCh: a nominal patch memory made of channels of mutual nearest neighbours across images
(D. McIntosh, A. B. Albu, "Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class
Classification", ICCV 2023; D. McIntosh, A. B. Albu, "Towards Total Online Unsupervised Anomaly Detection and
Localization in Industrial Vision", ECCV 2024).

A patch that recurs, in the same realisation, in image after image is nominal; a defect is rare, so its patches
find no partner. A *channel* links one patch to its mutual nearest neighbour in each other image; long channels
are nominal and their members form the memory. Patch score = squared L2 distance to the nearest member.

Descriptor (both forms): each backbone level (``layers``) unfolded into 3 x 3 neighbourhoods (stride 1, zero
padding 1) and adaptive-average-pooled from C·9 to ``embed_dim`` values, resized (bilinear) to the first level's
grid; the levels' vectors concatenated and adaptive-average-pooled to ``embed_dim`` again. No L2 normalisation.
The published code pools exactly so (so each level ends up as ``embed_dim / len(layers)`` consecutive averaged
channels, not averaged with the other levels); it feeds WRN-50's 13 residual-block outputs of layers 1-4 at
1024 values. oadbench's backbones give one output per stage, so ``layers`` = (1, 2, 3, 4) are the four stage
outputs (strides 4-32; the first level's grid has WRN-50's stride 4) and ``embed_dim=None`` keeps
min(1024, 9·C) of the narrowest level (216 for EfficientNet-Lite0's 24 channels: no level is stretched by the
pooling; 1024 for WRN-50). Channel pooling and the bilinear resize are both linear along different axes, so
pooling before resizing gives the published descriptor at a fraction of the cost.

Offline (``training: offline``; InReaCh, defaults ``assoc_depth`` 10, ``min_channel_length`` 3,
``max_channel_std`` 5):
- the first ``assoc_depth`` observed images are seeds; each seed is compared with every later image by exact
  distances over all patch pairs; only mutual nearest neighbours link (:func:`mutual_nearest_neighbours`);
- a patch linked to several seeds keeps the nearest link (ties: the earlier seed). The published code picks that
  seed among its stored links indexed by the *seed's* patch cell, the opposite of its own comment's order, so
  members of different channels are mixed when the two patches sit at different cells: implemented here as the
  comment and the paper describe it (per image patch);
- a channel = a seed patch and its linked patches; kept when it has *more than* ``min_channel_length`` members;
  then members whose distance to the channel mean exceeds ``max_channel_std`` x the standard deviation of the
  members' distances to the mean (``spread: code``, the published code's reading of its "spherical standard
  deviation": the population std of the distances) are dropped and the length checked again. Boundary: a member
  exactly at the bound stays (the code's strict ``<`` drops every member of a channel of identical patches, whose
  bound is 0). In 216 dimensions the distances to a mean concentrate, so their std is small next to them and the
  code's bound drops most members (transistor, 128 px: 216,877 members of long channels, 86,193 kept). ``spread:
  spherical`` takes σ as the members' root-mean-square distance to the mean (the spherical standard deviation of
  the cloud, the reading under which 5 σ drops outliers only). Measured (128 px, EfficientNet-Lite0, records in
  ``leaderboards/inreach``): ``code`` keeps 86,193 of 216,877 members on transistor (image AUROC 0.855; the
  offline form does not depend on the seed) and 37 of 81,641 on the synthetic marble; ``spherical`` drops none on
  transistor (0.978). The default stays the published form; ``spread=spherical`` is the working variant;
- the nominal memory is every surviving member (a patch in two channels is stored once: same scores);
- positional embedding (``positional: auto``): two coordinate channels (column·w/W, row·w/H, w =
  ``positional_weight`` 5.0) are appended to every descriptor when the mean training image differs from its
  transpose by a mean squared difference >= ``positional_threshold`` (1000, pixel values 0-255: aligned objects).
  The mean image is computed from the normalised images the method sees, mapped back with the backbone's std.

Online (``training: online``; Online-InReaCh, defaults ``time_to_live`` 40, ``min_channel_length`` 2, as the
paper's MVTec script and README; no positional term):
- every patch of the first image seeds a channel; for each later image, one at a time: every channel's time to
  live drops by one and channels at zero are deleted with their members; the image's patches are matched to the
  live channels' seed patches by mutual nearest neighbour; a matched patch joins its channel and renews its time
  to live, an unmatched one seeds a new channel. A channel therefore can be matched by the ``time_to_live`` - 1
  images after its last match and is deleted when the ``time_to_live``-th arrives (the published order:
  decrement, delete, match). The code's deletion loop indexes the seed list with a stale length (after the first
  deletion it deletes the wrong seed): here seeds and channels are deleted together;
- memory = the members of live channels with *at least* ``min_channel_length`` members (the published
  comparisons differ between the two forms: offline ``>``, online ``>=``; both are kept);
- ``max_members`` (not in the original, whose members grow without bound while channels keep matching): when the
  members outnumber it, the oldest members are evicted first (a member's channel keeps its count, so the length
  rule is unchanged; seed patches used for matching are kept apart and never evicted). The default, 2,000,000,
  holds every patch of 560 images at WRN-50's 3136 patches per image (MVTec AD's largest categories, train +
  test pooled) and of 1,953 images at oadbench's 128 px (1,024 patches): it binds only on longer streams or
  larger grids (e.g. MTD's 1,344 images at 256 px, 4,096 patches each, once 36 % of all patches are members).
  Memory: max_members x ``embed_dim`` x 4 bytes (1.7 GB at 216 values, 8 GB at 1024).

Scoring: squared L2 distance to the nearest memory patch (exact, :func:`nearest_neighbours`); the patch grid
block-upsampled (nearest) to the image and smoothed with a Gaussian of σ = 13 px at 224 px, scaled to the image
size (``sigma=None``: 13 · image_size / 224); image score = map maximum. With no nominal member yet (cold start,
few-shot with too few images for a channel, the first images of an online stream) the memory is every stored
patch, and with none stored the score is the squared descriptor norm, so scores are always finite.
Evaluation order: Online-InReaCh's code adds an image to its channels before scoring it (protocol key
``evaluation.order: observe_then_score``, protocol ``online_inreach``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from oadbench.components import mutual_nearest_neighbours, nearest_neighbours, upsample_maps
from oadbench.errors import ConfigError
from oadbench.method import OMIT_AT_DEFAULT, Batch, Method, MethodContext, Scores, register_method, tensor_bytes
from oadbench.validate import check_choice

POSITIONAL = ("auto", "on", "off")
SPREADS = ("code", "spherical")
PUBLISHED_WIDTH = 1024
PUBLISHED_SIGMA, PUBLISHED_SIZE = 13.0, 224  # the map blur in pixels at the published input size
MIN_LENGTH = {"offline": 3, "online": 2}


@register_method("inreach")
class InReaCh(Method):
    description = "channels of mutual nearest patches across images (McIntosh & Albu, ICCV 2023 / ECCV 2024)"
    needs_images = False  # features only; the offline positional rule (``auto``) reads the images when it needs them

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (1, 2, 3, 4)
        embed_dim: int | None = None  # descriptor width; None: min(1024, 9·C of the narrowest level)
        sigma: float | None = None  # map blur in px; None: 13 px at 224 px, scaled to the image size
        min_channel_length: int | None = None  # None: 3 offline (kept when longer), 2 online (kept when as long)
        assoc_depth: int = 10  # offline: seed images
        max_channel_std: float = 5.0  # offline: spread filter, in standard deviations
        # offline: σ = std of the members' distances to the mean (code) or their RMS (spherical)
        spread: str = field(default="code", metadata=OMIT_AT_DEFAULT)
        positional: str = "auto"  # auto: offline by the transpose rule, online off; on; off
        positional_weight: float = 5.0
        positional_threshold: float = 1000.0  # mean squared difference, pixel values 0-255
        time_to_live: int = 40  # online: images a channel waits for its next match
        max_members: int = 2_000_000  # online: most member patches kept (oldest evicted first)

        def __post_init__(self) -> None:
            check_choice(self.positional, POSITIONAL, "method.positional")
            check_choice(self.spread, SPREADS, "method.spread")
            if not self.layers:
                raise ConfigError("method.layers", "must name at least one backbone level")
            for key, lo in (("embed_dim", 1), ("min_channel_length", 1)):
                value = getattr(self, key)
                if value is not None and value < lo:
                    raise ConfigError(f"method.{key}", f"must be >= {lo} or null, got {value}")
            for key in ("assoc_depth", "time_to_live", "max_members"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"method.{key}", f"must be >= 1, got {getattr(self, key)}")
            if self.max_channel_std <= 0:
                raise ConfigError("method.max_channel_std", f"must be > 0, got {self.max_channel_std}")
            if self.sigma is not None and self.sigma < 0:
                raise ConfigError("method.sigma", f"must be >= 0 or null, got {self.sigma}")
            for key in ("positional_weight", "positional_threshold"):
                if getattr(self, key) < 0:
                    raise ConfigError(f"method.{key}", f"must be >= 0, got {getattr(self, key)}")

    def __init__(self, config: Config, context: MethodContext):
        super().__init__(config, context)
        self.width = config.embed_dim or min(PUBLISHED_WIDTH, 9 * min(context.channels))
        self.sigma = config.sigma if config.sigma is not None else PUBLISHED_SIGMA * context.image_size / PUBLISHED_SIZE
        self.min_length = config.min_channel_length or MIN_LENGTH[context.mode]
        self.offline = context.mode == "offline"
        self.positional = config.positional == "on"  # offline ``auto``: decided by the rule at consolidation
        self.grid: tuple[int, int] | None = None
        # offline
        self._stored: list[torch.Tensor] = []  # (b, P, D) descriptors, on the device
        self._image_sum: torch.Tensor | None = None  # (3, H, W) float64 sum of the normalised training images
        self._n_images = 0
        self.memory: torch.Tensor | None = None  # (M, D') nominal patches
        self.fallback = False  # the memory is every stored patch: no channel survived
        self.stats: dict[str, float] = {}
        self._stale = False
        # online: live channels (seed, time to live, member count) and their members in arrival order
        self.seeds: torch.Tensor | None = None  # (S, D)
        self.ttl: torch.Tensor | None = None  # (S,) long
        self.length: torch.Tensor | None = None  # (S,) long: patches that ever joined
        self.members: torch.Tensor | None = None  # (M, D)
        self.owner: torch.Tensor | None = None  # (M,) long: index of the member's channel in ``seeds``
        self.evicted = 0
        self._nominal: torch.Tensor | None = None  # cached members of long-enough channels

    # ---------------------------------------------------------------------------------------------------------

    def embed(self, batch: Batch) -> torch.Tensor:
        """(B, P, D) descriptors, P = h·w cells of the first level's grid (without positional channels)."""
        levels = batch.features
        size = levels[0].shape[-2:]
        pooled = []
        for f in levels:
            b, c, h, w = f.shape
            cells = F.unfold(f.float(), kernel_size=3, padding=1).transpose(1, 2).reshape(b * h * w, 1, c * 9)
            f = F.adaptive_avg_pool1d(cells, self.width).view(b, h, w, self.width).permute(0, 3, 1, 2)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            pooled.append(f)
        b = pooled[0].shape[0]
        stacked = torch.stack(pooled, 1).permute(0, 3, 4, 1, 2)  # (B, h, w, L, D)
        self.grid = (int(size[0]), int(size[1]))
        flat = stacked.reshape(b * size[0] * size[1], 1, len(pooled) * self.width)
        return F.adaptive_avg_pool1d(flat, self.width).view(b, size[0] * size[1], self.width)

    def with_positions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, D) -> (B, P, D + 2) with the column and row coordinates scaled to [0, weight)."""
        h, w = self.grid
        weight = self.config.positional_weight
        rows = torch.arange(h, device=x.device, dtype=x.dtype).repeat_interleave(w) * (weight / h)
        cols = torch.arange(w, device=x.device, dtype=x.dtype).repeat(h) * (weight / w)
        coords = torch.stack([cols, rows], 1).expand(x.shape[0], -1, -1)
        return torch.cat([x, coords], 2)

    def observe(self, batch: Batch) -> None:
        x = self.embed(batch)
        if self.offline:
            self._stored.append(x)
            if self.config.positional == "auto":  # the transpose rule's mean training image
                images = batch.images.double().sum(0)
                self._image_sum = images if self._image_sum is None else self._image_sum + images
                self._n_images += len(batch)
            self._stale = True
            return
        for image in x:
            self.update(image)

    # --------------------------------------------------------------------------------------------------------- offline

    def consolidate(self) -> None:
        if not self.offline or not self._stale:
            return
        x = torch.cat(self._stored)
        if self.config.positional == "auto":
            self.positional = transpose_difference(self._image_sum / self._n_images,
                                                   self.context.pixel_std) >= self.config.positional_threshold
        if self.positional:
            x = self.with_positions(x)
        members, self.stats = offline_channels(x, self.config.assoc_depth, self.min_length,
                                               self.config.max_channel_std, self.config.spread)
        flat = x.reshape(-1, x.shape[-1])
        self.fallback = members.numel() == 0
        self.memory = (flat if self.fallback else flat[members]).contiguous()
        self._stale = False

    # --------------------------------------------------------------------------------------------------------- online

    def update(self, x: torch.Tensor) -> None:
        """One image's descriptors (P, D) update the channels (Online-InReaCh's update; ``observe`` calls it for
        each image of a batch in turn)."""
        ttl = self.config.time_to_live
        self._nominal = None
        if self.seeds is not None:
            self.ttl -= 1
            alive = self.ttl > 0
            if not bool(alive.all()):
                self._keep_channels(alive)
        if self.seeds is None or self.seeds.shape[0] == 0:
            self._start(x)
            return
        rows, partners, _ = mutual_nearest_neighbours(x, self.seeds)
        self.length[partners] += 1
        self.ttl[partners] = ttl
        fresh = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        fresh[rows] = False
        first = self.seeds.shape[0]
        n_new = int(fresh.sum())
        self.seeds = torch.cat([self.seeds, x[fresh]])
        self.ttl = torch.cat([self.ttl, self.ttl.new_full((n_new,), ttl)])
        self.length = torch.cat([self.length, self.length.new_ones(n_new)])
        # members in arrival order: the image's patches in cell order, joined or new
        owner = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        owner[rows] = partners
        owner[fresh] = torch.arange(first, first + n_new, device=x.device)
        self.members = torch.cat([self.members, x])
        self.owner = torch.cat([self.owner, owner])
        self._evict()

    def _start(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        self.seeds = x.clone()
        self.ttl = torch.full((n,), self.config.time_to_live, dtype=torch.long, device=x.device)
        self.length = torch.ones(n, dtype=torch.long, device=x.device)
        self.members = x.clone()
        self.owner = torch.arange(n, device=x.device)
        self._evict()

    def _evict(self) -> None:
        """The oldest members beyond ``max_members`` leave (their channels keep their counts)."""
        excess = self.members.shape[0] - self.config.max_members
        if excess > 0:
            self.members, self.owner = self.members[excess:], self.owner[excess:]
            self.evicted += excess

    def _keep_channels(self, alive: torch.Tensor) -> None:
        """Delete the channels not ``alive`` (S,) with their members; the others keep their order."""
        new_index = torch.cumsum(alive, 0) - 1
        kept = alive[self.owner]
        self.members, self.owner = self.members[kept], new_index[self.owner[kept]]
        self.seeds, self.ttl, self.length = self.seeds[alive], self.ttl[alive], self.length[alive]

    def nominal(self) -> torch.Tensor | None:
        """The memory patches (M, D): offline the surviving channel members, online the members of channels with
        at least ``min_channel_length`` members; every stored patch when that is empty; None before any."""
        if self.offline:
            return self.memory
        if self._nominal is None and self.members is not None:
            keep = self.length[self.owner] >= self.min_length
            self.fallback = not bool(keep.any())
            self._nominal = self.members if self.fallback else self.members[keep]
        return self._nominal

    # ---------------------------------------------------------------------------------------------------------

    def score(self, batch: Batch) -> Scores:
        x = self.embed(batch)
        self.consolidate()
        if self.positional:
            x = self.with_positions(x)
        n, p, d = x.shape
        bank = self.nominal()
        if bank is None:  # nothing observed
            patch = x.square().sum(-1)
        else:
            dist, _ = nearest_neighbours(x.reshape(n * p, d), bank, k=1)
            patch = dist[:, 0].square().view(n, p)
        maps = upsample_maps(patch.view(n, *self.grid), batch.image_size, self.sigma, mode="nearest")
        return Scores(image=maps.flatten(1).amax(1), maps=maps)

    def diagnostics(self) -> dict[str, float]:
        if self.offline:
            return {**self.stats, "memory": float(self.memory.shape[0]) if self.memory is not None else 0.0,
                    "positional": float(self.positional), "fallback": float(self.fallback)}
        if self.seeds is None:
            return {}
        nominal = self.nominal()
        return {"channels": float(self.seeds.shape[0]),
                "nominal_channels": float((self.length >= self.min_length).sum()),
                "members": float(self.members.shape[0]), "memory": float(nominal.shape[0]),
                "evicted": float(self.evicted), "fallback": float(self.fallback)}

    def footprint(self) -> int:
        return tensor_bytes(self.memory, self.seeds, self.ttl, self.length, self.members, self.owner,
                            self._image_sum, *self._stored)


def transpose_difference(mean_image: torch.Tensor, pixel_std: tuple[float, ...]) -> float:
    """Mean squared difference, in pixel values 0-255, between a mean normalised image (3, H, W) and its
    transpose (InReaCh's test for aligned objects): normalisation subtracts the same mean from both, so only the
    std maps the difference back."""
    scale = 255.0 * torch.tensor(pixel_std, dtype=mean_image.dtype, device=mean_image.device).view(-1, 1, 1)
    diff = (mean_image - mean_image.transpose(1, 2)) * scale
    return float(diff.square().mean())


def offline_channels(x: torch.Tensor, assoc_depth: int, min_channel_length: int, max_channel_std: float,
                     spread: str = "code") -> tuple[torch.Tensor, dict[str, float]]:
    """InReaCh's channels over descriptors ``x`` (N images, P patches, D): the flat indices (into
    ``x.reshape(N·P, D)``, ascending, each once) of every member of a surviving channel, and counts (channels
    formed and kept, members before and after the spread filter). A channel is identified by its seed patch
    (seed image s < ``assoc_depth``, cell p): flat index s·P + p. ``spread``: σ of the filter is the std of the
    members' distances to their mean (``code``) or their root-mean-square (``spherical``)."""
    n, p, _ = x.shape
    seeds = min(assoc_depth, n)
    best = torch.full((n, p), float("inf"), device=x.device)
    channel = torch.full((n, p), -1, dtype=torch.long, device=x.device)
    for s in range(seeds):
        for j in range(s + 1, n):
            rows, partners, dist = mutual_nearest_neighbours(x[j], x[s])
            nearer = dist < best[j, rows]  # strict: on a tie the earlier seed keeps the patch
            rows = rows[nearer]
            best[j, rows] = dist[nearer]
            channel[j, rows] = s * p + partners[nearer]
    linked = torch.nonzero(channel.flatten() >= 0).flatten()
    owners = channel.flatten()[linked]
    seed_cells = torch.unique(owners)  # every channel with a link: its seed is a member too
    member = torch.cat([seed_cells, linked])
    owner = torch.cat([seed_cells, owners])
    flat = x.reshape(n * p, -1).float()
    ids, owner = torch.unique(owner, return_inverse=True)
    count = torch.bincount(owner, minlength=ids.numel())
    formed = int(ids.numel())
    keep = count[owner] > min_channel_length
    before = int(keep.sum())
    member, owner = member[keep], owner[keep]
    vectors = flat[member]
    size = torch.bincount(owner, minlength=ids.numel()).clamp_min(1).unsqueeze(1).float()
    mean = torch.zeros(ids.numel(), flat.shape[1], device=x.device).index_add_(0, owner, vectors) / size
    radius = (vectors - mean[owner]).norm(dim=1)
    r_mean = torch.zeros(ids.numel(), device=x.device).index_add_(0, owner, radius) / size[:, 0]
    centred = radius - r_mean[owner] if spread == "code" else radius
    r_std = (torch.zeros(ids.numel(), device=x.device).index_add_(0, owner, centred.square()) / size[:, 0]).sqrt()
    close = radius <= max_channel_std * r_std[owner]
    member, owner = member[close], owner[close]
    count = torch.bincount(owner, minlength=ids.numel())
    survive = count[owner] > min_channel_length
    kept = int((count > min_channel_length).sum())
    nominal = torch.unique(member[survive])
    return nominal, {"channels_formed": float(formed), "channels": float(kept), "members_long": float(before),
                     "members": float(int(survive.sum())), "memory_patches": float(nominal.numel())}
