//! Reference definitions of rounding to 16-bit floats, shared by every
//! backend so that stochastic rounding gives the same bits everywhere.

use half::{bf16, f16};

/// splitmix64 (Steele et al. 2014): the per-element random source.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 16 random bits element `i` of a call with `seed` uses.
pub fn random_bits(seed: u64, i: u64) -> u32 {
    (splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) & 0xFFFF) as u32
}

/// bf16 with stochastic rounding: add 16 random bits below bf16's last
/// place, then truncate. Unbiased: E[result] = x. Non-finite values and
/// values that would round past the largest finite bf16 keep nearest-even.
pub fn bf16_stochastic(x: f32, bits: u32) -> bf16 {
    if !x.is_finite() {
        return bf16::from_f32(x);
    }
    let raised = x.to_bits().wrapping_add(bits & 0xFFFF);
    let out = f32::from_bits(raised & 0xFFFF_0000);
    if out.is_finite() {
        bf16::from_bits((raised >> 16) as u16)
    } else {
        bf16::from_f32(x)
    }
}

/// f16 with stochastic rounding: choose between the two f16 neighbours of
/// `x` with probability proportional to closeness (`u = bits / 2^16`).
pub fn f16_stochastic(x: f32, bits: u32) -> f16 {
    let near = f16::from_f32(x);
    if !x.is_finite() || !near.is_finite() {
        return near;
    }
    let nv = near.to_f32();
    if nv == x {
        return near;
    }
    // The other neighbour: one f16 ulp from `near` towards x.
    let other = if (nv < x) == (nv >= 0.0) {
        f16::from_bits(near.to_bits().wrapping_add(1))
    } else if near.to_bits() & 0x7FFF == 0 {
        // near is +-0 and x is on the other side: the smallest subnormal there.
        f16::from_bits(if x > 0.0 { 0x0001 } else { 0x8001 })
    } else {
        f16::from_bits(near.to_bits().wrapping_sub(1))
    };
    let ov = other.to_f32();
    if !ov.is_finite() {
        return near;
    }
    let (lo, hi) = if nv < ov { (nv, ov) } else { (ov, nv) };
    let p_hi = ((x - lo) / (hi - lo)) as f64;
    let u = (bits & 0xFFFF) as f64 / 65536.0;
    let pick_hi = u < p_hi;
    if (pick_hi && hi == nv) || (!pick_hi && lo == nv) {
        near
    } else {
        other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_rounding_is_unbiased_and_stays_between_neighbours() {
        for &x in &[
            1.0f32 + 1.0 / 512.0,
            -3.000_244,
            1e-3,
            65000.5,
            0.333_333_34,
        ] {
            let (mut sb, mut sf) = (0.0f64, 0.0f64);
            let n = 20_000u64;
            for i in 0..n {
                let bits = random_bits(7, i);
                let b = bf16_stochastic(x, bits).to_f32();
                let f = f16_stochastic(x, bits).to_f32();
                let (bl, bh) = (
                    bf16::from_bits(bf16::from_f32(x).to_bits().wrapping_sub(1)).to_f32(),
                    bf16::from_bits(bf16::from_f32(x).to_bits().wrapping_add(1)).to_f32(),
                );
                assert!(b >= bl.min(bh) && b <= bl.max(bh), "{x}: {b}");
                sb += b as f64;
                sf += f as f64;
            }
            let (mb, mf) = (sb / n as f64, sf / n as f64);
            let ulp_b = (x.abs() as f64) * 2f64.powi(-7);
            let ulp_f = ((x.abs() as f64) * 2f64.powi(-10)).max(2f64.powi(-24));
            assert!(
                (mb - x as f64).abs() < 0.05 * ulp_b,
                "bf16 mean {mb} vs {x}"
            );
            assert!((mf - x as f64).abs() < 0.05 * ulp_f, "f16 mean {mf} vs {x}");
        }
    }

    #[test]
    fn exact_values_are_kept() {
        for i in 0..100 {
            assert_eq!(bf16_stochastic(1.5, random_bits(1, i)).to_f32(), 1.5);
            assert_eq!(f16_stochastic(-0.25, random_bits(1, i)).to_f32(), -0.25);
        }
        assert!(bf16_stochastic(f32::NAN, 3).is_nan());
    }
}
