"""The values of a batch: what goes in (`BatchRequest`), what comes out (`BatchResult`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from nanobanana._calls import generate_body

if TYPE_CHECKING:
    from nanobanana._errors import NanoBananaError
    from nanobanana._models import Generation

__all__ = ["BatchRequest", "BatchResult", "BatchStats", "BatchStatus", "check_options"]

#: How an item ended; see `BatchResult`.
BatchStatus = Literal["completed", "failed", "lost", "maybe_charged", "timeout", "error"]


def _urls(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError("reference_image_urls must be a list of URLs, not a single string")
    return tuple(value)


def check_options(
    *,
    model: str | None,
    aspect_ratio: str | None,
    quantity: int | None,
    reference_image_urls: Sequence[str] | None,
    prompt: str = "a prompt",
) -> None:
    """Raise `TypeError`/`ValueError` for options ``client.generate()`` would refuse."""
    # One set of rules: the checks of client.generate() itself.
    generate_body(
        prompt,
        mode="async",
        model=model,
        reference_image_urls=reference_image_urls,
        aspect_ratio=aspect_ratio,
        quantity=quantity,
    )


@attrs.frozen(kw_only=True)
class BatchRequest:
    """One item of a batch: a prompt, and the options it sets for itself.

    Options left as None take the batch's defaults (the keyword arguments of
    ``client.batch()``), then the server's. Invalid values raise at construction, as
    ``client.generate()`` would.

    ```python
    BatchRequest(prompt="a moon", aspect_ratio="16:9", quantity=2, key="moon")
    ```

    Attributes:
        prompt: what to draw.
        model: a model name from ``client.models()``.
        aspect_ratio: e.g. ``"16:9"``.
        quantity: images to make.
        reference_image_urls: images for image-to-image.
        key: the item's stable name in a journal. Default: a digest of the fields
            above (``#2``, ``#3`` added for repeats), so that editing the input around
            an item does not make it run, and be paid for, again. Keys must be unique.
    """

    prompt: str
    model: str | None = None
    aspect_ratio: str | None = None
    quantity: int | None = None
    reference_image_urls: tuple[str, ...] | None = attrs.field(default=None, converter=_urls)
    key: str | None = None

    def __attrs_post_init__(self) -> None:
        check_options(
            prompt=self.prompt,
            model=self.model,
            aspect_ratio=self.aspect_ratio,
            quantity=self.quantity,
            reference_image_urls=self.reference_image_urls,
        )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise TypeError("key must be a non-empty str or None")


@attrs.frozen(kw_only=True)
class BatchResult:
    """How one item of a batch ended; ``client.batch()`` yields one per item.

    ``status`` is one of:

    - ``completed``: generated (and its images saved, with ``download_dir``);
    - ``failed``: the generation failed, or the content-safety check refused it (paid);
    - ``lost``: the journal had the item's generation id, which the server no longer
      knows;
    - ``maybe_charged``: a request for the item may have been accepted and no id came
      back (a 500 or a timeout after sending, or a run stopped mid-request); it is not
      sent again unless ``retry_failed=True``;
    - ``timeout``: the item ran out of ``item_timeout``; its generation may still finish,
      and a later run with the same journal picks it up;
    - ``error``: anything else (a network failure after retries, a failed download); a
      later run with the same journal tries it again, without paying twice.

    Attributes:
        index: the item's position in the input, counting from 0.
        prompt: the item's prompt.
        generation: the completed `Generation`, or None when the item did not complete.
        error: why the item did not complete (a `NanoBananaError`), or None.
        files: the images saved in ``download_dir``, in the order of the image URLs.
        status: how it ended (above).
        key: the item's key in the journal (None without a journal, unless the
            request set one).
        generation_id: the generation's id whenever it is known, also for failures
            (``client.job(generation_id)`` picks up a ``timeout``).
        credits_used: the credits the server reported for the generation, if known.
        from_journal: the item had ended in an earlier run with the same journal; the
            result is read back from it, and nothing was sent for it.
    """

    index: int
    prompt: str
    generation: Generation | None = None
    error: NanoBananaError | None = None
    files: tuple[Path, ...] = ()
    status: BatchStatus = "completed"
    key: str | None = None
    generation_id: str | None = None
    credits_used: int | None = None
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """Whether the item completed."""
        return self.error is None


@attrs.frozen(kw_only=True)
class BatchStats:
    """A snapshot of a running batch (``batch.stats()``), e.g. for a progress display.

    Attributes:
        done: results yielded so far, those read back from the journal included.
        failed: of those, the ones that did not complete.
        from_journal: of those, the ones read back from the journal.
        running: items under way now.
        awaiting_id: of those, items whose generation request was sent and whose id
            has not come back yet (if the batch stops now, they may have been charged).
        credits_spent: credits the server reported for this run's generations.
    """

    done: int = 0
    failed: int = 0
    from_journal: int = 0
    running: int = 0
    awaiting_id: int = 0
    credits_spent: int = 0
