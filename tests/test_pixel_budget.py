"""The decode budget (clip_service/inputs/pixel_budget.py): images hold their pixel count
until done; what does not fit waits in order; one larger than the budget runs alone."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from clip_service.errors import PayloadTooLarge
from clip_service.inputs.pixel_budget import PixelBudget
from clip_service.server.encoding import ItemEncoder
from clip_service.settings import Settings


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_pixels_held_never_exceed_the_budget() -> None:
    async def main() -> None:
        budget = PixelBudget(100)
        peak = 0
        gates = [asyncio.Event() for _ in range(4)]

        async def decode(pixels: int, gate: asyncio.Event) -> None:
            nonlocal peak
            async with budget.hold(pixels):
                peak = max(peak, budget.in_use)
                await gate.wait()

        tasks = [
            asyncio.create_task(decode(pixels, gate))
            for pixels, gate in zip((60, 30, 50, 500), gates, strict=True)
        ]
        await settle()
        assert budget.in_use == 90  # 60 + 30; the 50 waits, and the 500 behind it
        gates[0].set()
        await settle()
        assert budget.in_use == 80  # 30 + 50
        gates[1].set()
        gates[2].set()
        await settle()
        assert budget.in_use == 100  # the 500, alone, holding the whole budget
        gates[3].set()
        await asyncio.gather(*tasks)
        assert peak <= 100 and budget.in_use == 0

    asyncio.run(main())


def test_a_cancelled_waiter_gives_way() -> None:
    async def main() -> None:
        budget = PixelBudget(10)
        gate = asyncio.Event()

        async def decode(pixels: int) -> None:
            async with budget.hold(pixels):
                await gate.wait()

        first = asyncio.create_task(decode(8))
        await settle()
        big, small = asyncio.create_task(decode(5)), asyncio.create_task(decode(1))
        await settle()
        big.cancel()
        await settle()
        assert budget.in_use == 9  # the small one behind the cancelled one was granted
        gate.set()
        await asyncio.gather(first, small)
        assert budget.in_use == 0

    asyncio.run(main())


def test_a_release_before_a_cancelled_waiter_has_run_skips_it() -> None:
    """A waiter cancelled (a request's 504) in the same turn of the loop as the budget is
    released, before its task has run: the release must pass it over, not grant it."""

    async def main() -> None:
        budget = PixelBudget(10)
        held, release = asyncio.Event(), asyncio.Event()
        waiters: list[asyncio.Task[None]] = []

        async def holder() -> None:
            async with budget.hold(10):
                held.set()
                await release.wait()
                waiters[0].cancel()  # its future is cancelled now; its task runs later

        async def waiter(pixels: int) -> None:
            async with budget.hold(pixels):
                pass

        first = asyncio.create_task(holder())
        await held.wait()
        waiters.extend([asyncio.create_task(waiter(6)), asyncio.create_task(waiter(4))])
        await settle()
        release.set()
        await first
        cancelled, behind = waiters
        await asyncio.gather(cancelled, behind, return_exceptions=True)
        assert cancelled.cancelled() and behind.done() and not behind.exception()
        assert budget.in_use == 0 and not budget._waiters

    asyncio.run(main())


# Twice the limit, and three times: past twice, Pillow refuses to open the header at all.
@pytest.mark.parametrize("size", [(200, 100), (300, 100)], ids=["2x", "3x"])
def test_an_image_over_the_limit_is_refused_without_waiting_for_the_budget(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its header says it is too large: it must not queue behind (and then hold up) the
    decodes in progress for a budget it will never use."""
    settings = Settings(max_image_pixels=10_000, decode_pixel_budget=10_000)
    # As in a serving process once decode_image has run: Pillow's limit is the decode limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", settings.max_image_pixels)
    encoder = ItemEncoder(None, settings)  # type: ignore[arg-type]  # no model work here
    png = io.BytesIO()
    Image.new("P", size).save(png, "PNG")  # 20,000 or 30,000 pixels, a few hundred bytes

    async def main() -> None:
        release = asyncio.Event()

        async def busy_decode() -> None:
            async with encoder.budget.hold(settings.decode_pixels):
                await release.wait()

        busy = asyncio.create_task(busy_decode())
        await settle()
        assert encoder.budget.in_use == settings.decode_pixels
        # A hang guard, not a speed claim: waiting for the budget would never end here.
        with pytest.raises(PayloadTooLarge, match="10000 pixels"):
            await asyncio.wait_for(encoder.preprocessed(png.getvalue(), "image", []), 60)
        release.set()
        await busy

    asyncio.run(main())
