//! Simulcast layer choice, pure: which of a publisher's layers (up to three encodings of one
//! video, told apart by RTP stream id) each subscriber slot gets, from the subscriber's
//! bandwidth estimate (its transport-cc feedback, through the engine's estimator) and the rate
//! each layer arrives at. No clock and no I/O: the engine measures and asks; [`keyframe`] says
//! where a switch may happen.
//!
//! The rule: a slot's share of the estimate is what is left after the audio, split evenly among
//! the video slots the subscriber receives. The slot keeps its layer while that layer fits its
//! share; it moves up to a better layer only when that layer fits with [`UP_MARGIN`] to spare
//! (so an estimate near a layer's rate does not flip the choice back and forth), and down to
//! the best layer that fits when the current one no longer does (the lowest when none does).

pub mod keyframe;

/// What a moving-up layer must leave free of the slot's share: its rate × this ≤ share.
pub const UP_MARGIN: f64 = 1.15;
/// Estimate set aside per audio stream a subscriber receives (Opus at its usual rate plus
/// headers), in bits per second.
pub const AUDIO_RESERVE_BPS: u64 = 48_000;

/// A slot's share of a subscriber's estimate, in bits per second.
pub fn video_share(estimate_bps: u64, audio_streams: usize, video_streams: usize) -> u64 {
    let audio = AUDIO_RESERVE_BPS.saturating_mul(audio_streams as u64);
    estimate_bps.saturating_sub(audio) / video_streams.max(1) as u64
}

/// The layer a slot should get: an index into `rates`, the arrival rate of each layer (bits
/// per second) ordered from the lowest layer to the highest; `current` is the slot's layer
/// now. Layers arriving at rate 0 (paused by the publisher, or not started) are never chosen
/// unless all are. None when there are no layers.
pub fn choose_layer(rates: &[u64], share_bps: u64, current: Option<usize>) -> Option<usize> {
    let live: Vec<usize> = (0..rates.len()).filter(|&i| rates[i] > 0).collect();
    if live.is_empty() {
        return current
            .filter(|&c| c < rates.len())
            .or(rates.first().map(|_| 0));
    }
    let fits = |i: usize| rates[i] <= share_bps;
    let fits_up = |i: usize| rates[i] as f64 * UP_MARGIN <= share_bps as f64;
    let best_up = live.iter().rev().find(|&&i| fits_up(i)).copied();
    match current.filter(|c| live.contains(c)) {
        Some(c) if fits(c) => Some(best_up.filter(|&b| b > c).unwrap_or(c)),
        _ => Some(
            live.iter()
                .rev()
                .find(|&&i| fits(i))
                .copied()
                .unwrap_or(live[0]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [u64; 3] = [150_000, 500_000, 1_500_000];

    #[test]
    fn the_share_leaves_room_for_audio_and_splits_among_videos() {
        assert_eq!(video_share(1_096_000, 2, 2), 500_000);
        assert_eq!(video_share(1_000_000, 1, 0), 952_000);
        assert_eq!(video_share(10_000, 3, 1), 0);
    }

    #[test]
    fn the_best_layer_that_fits_with_a_margin_going_up() {
        assert_eq!(choose_layer(&LAYERS, 2_000_000, None), Some(2));
        assert_eq!(choose_layer(&LAYERS, 1_000_000, None), Some(1));
        // Nothing fits: the lowest layer still flows.
        assert_eq!(choose_layer(&LAYERS, 50_000, None), Some(0));
        assert_eq!(choose_layer(&LAYERS, 50_000, Some(2)), Some(0));
        // Up only with the margin: 1.5 Mbit/s × 1.15 does not fit in 1.6 Mbit/s.
        assert_eq!(choose_layer(&LAYERS, 1_600_000, Some(1)), Some(1));
        assert_eq!(choose_layer(&LAYERS, 1_800_000, Some(1)), Some(2));
        // Staying needs no margin; leaving happens once the layer no longer fits.
        assert_eq!(choose_layer(&LAYERS, 1_500_000, Some(2)), Some(2));
        assert_eq!(choose_layer(&LAYERS, 1_400_000, Some(2)), Some(1));
    }

    #[test]
    fn paused_layers_are_skipped_and_no_layers_is_none() {
        assert_eq!(
            choose_layer(&[150_000, 0, 1_500_000], 1_000_000, None),
            Some(0)
        );
        assert_eq!(
            choose_layer(&[150_000, 0, 1_500_000], 1_000_000, Some(1)),
            Some(0)
        );
        assert_eq!(choose_layer(&[0, 0], 1_000_000, Some(1)), Some(1));
        assert_eq!(choose_layer(&[0, 0], 1_000_000, None), Some(0));
        assert_eq!(choose_layer(&[], 1_000_000, None), None);
    }
}
