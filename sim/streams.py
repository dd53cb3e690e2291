"""Testbench helpers for valid/ready handshakes: ``amaranth.lib.stream`` interfaces and bus
channels (async testbenches only)."""

__all__ = ["offer", "stream_get", "stream_put"]


async def stream_put(ctx, stream, payload):
    """Offer ``payload`` on ``stream`` until the sink takes it."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Take one payload from ``stream``."""
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def offer(ctx, valid, ready, payload):
    """Hold ``valid`` with ``payload`` ((signal, value) pairs) until the handshake edge: for
    any valid/ready channel, e.g. an AXI address or data channel."""
    for signal, value in payload:
        ctx.set(signal, value)
    ctx.set(valid, 1)
    # A plain loop rather than `.until()`: when a model raises, the simulation is abandoned
    # with this coroutine suspended, and closing a suspended `.until()` warns.
    while not (await ctx.tick().sample(ready))[2]:
        pass
    ctx.set(valid, 0)
