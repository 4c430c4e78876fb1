"""Which attacks may share a batch with other cells' images.

The runner attacks the cells of one target, attack and seed that differ only by eps in one batch
(each eps's copy of the images beside the others) when the attack says each image's result depends
on that image alone, the same in any batch: its ``images_independent`` is true. It then gets eps
as a ``(B, 1, 1, 1)`` tensor, one value per image, and must use it as it uses a float (broadcast
against the images).
An attack without the attribute is never batched this way.
"""

from __future__ import annotations

__all__ = ["ImagesIndependent"]


class ImagesIndependent:
    """Mixin of a deterministic optimizer whose steps and projections are per image: each image's
    result is a function of that image, its targets and its eps, unless the loss is the authors'
    mean over the whole batch's pixels (``loss="batch"``), whose normaliser couples the images, or
    it starts at a random point (``random_start``), drawn for the batch as a whole, so that an
    image's draw depends on where it sits in the batch. A randomised attack (Square) is not
    batched for the same reason: batched, its cells would be other samples of it than alone."""

    loss: str

    @property
    def images_independent(self) -> bool:
        return self.loss == "image" and not getattr(self, "random_start", False)
