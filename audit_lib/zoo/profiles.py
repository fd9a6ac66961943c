"""What each zoo profile contains: entries, recipes, seeds and data split sizes.

- ``ci``: everything the tests need, built on 2 CPU cores in minutes and cached.
- ``full``: larger members sets, longer training, 24 independent encoders (meant for a GPU).
- ``demo``: what ``make demo`` needs and no more: the ci profile's tiny CLIP and SimCLR
  target (same recipes, seeds and splits, so the same weights) and its first three
  independent encoders; no shadow encoder (the demo's membership rule needs none).
- ``smoke``: a few optimiser steps per entry, for testing the build machinery itself.

Entries:

1. ``tiny-clip`` (identity-target): a tiny open_clip model on ORL faces with captions that
   name the member half of the people.
2. ``simclr-target`` (membership-target) overfitted on a known member split of the image
   set, and ``simclr-shadow*`` (membership-shadow) trained the same way on disjoint data,
   for EncoderMI's shadow classifiers.
3. ``independent-NN`` (independent): encoders of other seeds, data subsets and
   architectures: the null population for ownership checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from audit_lib.zoo.recipes import ClipRecipe, SimCLRRecipe

#: Named splits of the image set's train array; "public" is everything not in these.
SPLIT_NAMES = ("target_members", "target_nonmembers", "shadow_members", "shadow_nonmembers")


@dataclass(frozen=True)
class ImageEntrySpec:
    """An image-only SimCLR encoder of the zoo."""

    name: str  # unique within the profile
    role: str  # membership-target, membership-shadow or independent
    architecture: str  # small_cnn:… (or any build() string)
    recipe: SimCLRRecipe  # how it is trained
    seed: int  # initialisation, batch order and augmentation seed
    train_split: str  # split of the image set it is trained on (SPLIT_NAMES or "public")
    holdout_split: str | None = None  # split kept apart as its known non-members
    subset: int = 0  # train on this many images of train_split (0 = all of it)
    subset_seed: int = 0  # which subset


@dataclass(frozen=True)
class ClipEntrySpec:
    """The tiny CLIP trained on named faces."""

    name: str = "tiny-clip"
    architecture: str = "open_clip:tiny-clip-vit"
    recipe: ClipRecipe = field(default_factory=ClipRecipe)
    seed: int = 0
    members: int = 20  # people s1..s{members} are named in captions: members
    generic_nonmembers: int = 10  # the next this many appear with generic captions only; the rest not at all
    heldout_per_person: int = 3  # photos per person never trained on (the audit photos)
    named_photos: int = 6  # per member, training photos with a named caption (the others: generic)
    decoys: int = 60  # decoy names besides the 40 people in the zero-shot check (chance = 1/100)


@dataclass(frozen=True)
class Profile:
    """A zoo: entries plus how the image set is split."""

    name: str
    split_seed: int  # seed of the member / non-member / shadow / public split
    split_sizes: dict[str, int]  # sizes of SPLIT_NAMES (scaled down on the small fallback set)
    downstream_per_class: int  # labelled downstream train images per class (from the test array)
    clip: ClipEntrySpec | None
    image_entries: tuple[ImageEntrySpec, ...]
    mi_eval_images: int = 300  # members and non-members each in the membership check
    mi_views: int = 10  # augmented views per image in the membership check (EncoderMI's n)


_CNN = "small_cnn:small-cnn-32"
_CNN_WIDE = "small_cnn:small-cnn-32-wide"


def _independents(count: int, recipe: SimCLRRecipe, subset: int, archs: tuple[str, ...]) -> tuple[ImageEntrySpec, ...]:
    return tuple(ImageEntrySpec(name=f"independent-{i:02d}", role="independent", architecture=archs[i % len(archs)],
                                recipe=recipe, seed=100 + i, train_split="public", subset=subset,
                                subset_seed=1000 + i)
                 for i in range(1, count + 1))


#: The ci zoo's independent encoders' recipe; the suspect-zoo builder trains its own extra
#: independent families with it too (``audit_lib.zoo.suspects.train_independent``).
CI_INDEPENDENT_RECIPE = SimCLRRecipe(epochs=3, batch_size=128, lr=3e-3, warmup_steps=5, temperature=0.2)


def _ci() -> Profile:
    # Measured on an H100 sweep (same code, CUDA): 64 members x 400 epochs gives view-similarity
    # AUC 0.90-0.92 over two seeds/splits; 500 members x 40 epochs only 0.53. On 2 CPU cores
    # this costs about 100 s per encoder, which is what the ci budget allows.
    target = SimCLRRecipe(epochs=400, batch_size=128, lr=3e-3, warmup_steps=10, temperature=0.2)
    entries = (
        ImageEntrySpec("simclr-target", "membership-target", _CNN, target, seed=1,
                       train_split="target_members", holdout_split="target_nonmembers"),
        ImageEntrySpec("simclr-shadow", "membership-shadow", _CNN, target, seed=2,
                       train_split="shadow_members", holdout_split="shadow_nonmembers"),
        *_independents(6, CI_INDEPENDENT_RECIPE, subset=1000, archs=(_CNN, _CNN, _CNN_WIDE)),
    )
    # Tiny CLIP, zero-shot member name accuracy among 100 names (chance 0.01): 0.49 at 100
    # epochs, 0.78 at 300 (1,200 steps, about 90 s on 2 idle CPU cores).
    return Profile(name="ci", split_seed=7, split_sizes={"target_members": 64, "target_nonmembers": 500,
                                                         "shadow_members": 64, "shadow_nonmembers": 500},
                   downstream_per_class=100, clip=ClipEntrySpec(recipe=ClipRecipe(epochs=300)),
                   image_entries=entries)


def _full() -> Profile:
    # H100 sweep: 500 members x 1000 epochs -> AUC 0.94 (small-cnn-32); 1000 members -> 0.89.
    target = SimCLRRecipe(epochs=1000, batch_size=128, lr=3e-3, warmup_steps=50, temperature=0.2)
    indep = SimCLRRecipe(epochs=10, batch_size=256, lr=3e-3, warmup_steps=50, temperature=0.2)
    entries = (
        ImageEntrySpec("simclr-target", "membership-target", _CNN, target, seed=1,
                       train_split="target_members", holdout_split="target_nonmembers"),
        ImageEntrySpec("simclr-shadow", "membership-shadow", _CNN, target, seed=2,
                       train_split="shadow_members", holdout_split="shadow_nonmembers"),
        ImageEntrySpec("simclr-shadow-2", "membership-shadow", _CNN_WIDE, target, seed=3,
                       train_split="shadow_members", holdout_split="shadow_nonmembers"),
        *_independents(24, indep, subset=4000, archs=(_CNN, _CNN_WIDE)),
    )
    return Profile(name="full", split_seed=7, split_sizes={"target_members": 500, "target_nonmembers": 1000,
                                                           "shadow_members": 500, "shadow_nonmembers": 1000},
                   downstream_per_class=100,
                   clip=ClipEntrySpec(architecture="open_clip:tiny-clip-vit-l4", recipe=ClipRecipe(epochs=200)),
                   image_entries=entries, mi_eval_images=500)


def _demo() -> Profile:
    ci = _ci()
    target = [e for e in ci.image_entries if e.role == "membership-target"]
    independents = [e for e in ci.image_entries if e.role == "independent"][:3]
    return replace(ci, name="demo", image_entries=(*target, *independents))


def _smoke() -> Profile:
    ci = _ci()
    quick = SimCLRRecipe(epochs=1, batch_size=32, max_steps=2, warmup_steps=1)
    entries = tuple(replace(e, recipe=quick, subset=64) for e in ci.image_entries[:3])
    clip = replace(ci.clip, recipe=ClipRecipe(epochs=1, batch_size=16, max_steps=2, warmup_steps=1), decoys=10)
    return Profile(name="smoke", split_seed=7, split_sizes={k: 64 for k in ci.split_sizes},
                   downstream_per_class=10, clip=clip, image_entries=entries, mi_eval_images=16, mi_views=3)


PROFILES = {"ci": _ci, "demo": _demo, "full": _full, "smoke": _smoke}


def get_profile(name: str) -> Profile:
    """The named profile; ValueError naming the known ones otherwise."""
    if name not in PROFILES:
        raise ValueError(f"zoo profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]()
