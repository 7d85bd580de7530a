//! q8_0: blocks of 32 weights as one f16 scale and 32 signed bytes, bit for
//! bit what ggml's `quantize_row_q8_0_ref` writes.

/// Weights per block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per block: the f16 scale, then the 32 quants.
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// Quantizes `x` (a multiple of 32 long) to q8_0 blocks. The scale is
/// max|x| / 127 in f32, stored as f16; each quant is round-half-away(x / scale)
/// computed as x times the f32 reciprocal, as ggml does.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len().is_multiple_of(Q8_0_BLOCK),
        "q8_0 needs whole blocks of 32"
    );
    out.reserve(x.len() / Q8_0_BLOCK * Q8_0_BLOCK_BYTES);
    for block in x.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        // `f32::round` rounds half away from zero, as C's roundf.
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_its_scale_and_rounded_quants() {
        // amax 127 makes the scale exactly 1: halves round away from zero.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5;
        x[2] = 0.4;
        x[3] = 2.5;
        let mut out = Vec::new();
        quantize_q8_0(&x, &mut out);
        assert_eq!(out.len(), Q8_0_BLOCK_BYTES);
        assert_eq!(half::f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        let q: Vec<i8> = out[2..6].iter().map(|&b| b as i8).collect();
        assert_eq!(q, [127, -64, 0, 3]);
    }

    #[test]
    fn zeros_quantize_to_a_zero_scale() {
        let mut out = Vec::new();
        quantize_q8_0(&[0.0; 64], &mut out);
        assert!(out.iter().all(|&b| b == 0));
        assert_eq!(out.len(), 2 * Q8_0_BLOCK_BYTES);
    }

    proptest::proptest! {
        #[test]
        fn dequantized_values_are_within_half_a_step(x in proptest::collection::vec(-100.0f32..100.0, 32)) {
            let mut out = Vec::new();
            quantize_q8_0(&x, &mut out);
            let d = half::f16::from_le_bytes([out[0], out[1]]).to_f32();
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, v) in x.iter().enumerate() {
                let q = out[2 + i] as i8 as f32;
                // The f16 scale is off by at most 2^-11 relative.
                proptest::prop_assert!((q * d - v).abs() <= 0.5 * d + amax * 1e-3 + 1e-6);
            }
        }
    }
}
