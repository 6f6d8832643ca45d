//! The event maps of a loaded object (`umlbr monitor`'s ring buffer, the
//! listener's lease, the per-kind buckets), for the prog_* tables.
use anyhow::Result;
use aya::maps::{Array, MapData, RingBuf};
use umlbr_common::{EV_KINDS, EvBucket, EvCtl, Event, names};

use crate::bpf::Ctx;

/// A lease that never runs out.
pub const FOREVER: u64 = u64::MAX;

/// Set the listener's lease to `until_ns` (CLOCK_MONOTONIC_COARSE; 0:
/// nobody listens), as `umlbr monitor` does.
pub fn listen(ctx: &mut Ctx, until_ns: u64) -> Result<()> {
    ctx.set_array(names::EV_CTL, EvCtl { until_ns })
}

/// Every event waiting in the ring buffer, taken out of it.
pub fn drain(ctx: &mut Ctx) -> Result<Vec<Event>> {
    let mut ring: RingBuf<&mut MapData> = ctx.map(names::EVENTS)?;
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        anyhow::ensure!(
            item.len() == size_of::<Event>(),
            "an event of {} bytes",
            item.len()
        );
        // SAFETY: an Event's bytes, read unaligned.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    Ok(out)
}

/// Suppressed events by kind.
pub fn suppressed(ctx: &mut Ctx) -> Result<Vec<u64>> {
    let rate: Array<&mut MapData, EvBucket> = ctx.map(names::EV_RATE)?;
    (0..EV_KINDS)
        .map(|k| Ok(rate.get(&k, 0)?.suppressed))
        .collect()
}

/// Empty buckets (full bursts, nothing suppressed) and an empty ring.
pub fn reset(ctx: &mut Ctx) -> Result<()> {
    {
        let mut rate: Array<&mut MapData, EvBucket> = ctx.map(names::EV_RATE)?;
        for k in 0..EV_KINDS {
            rate.set(k, EvBucket::default(), 0)?;
        }
    }
    drain(ctx)?;
    Ok(())
}
