//! Host values of every dtype as f64, their byte encodings, and the
//! tolerances the suite holds backends to.
//!
//! Tolerances are relative to the largest magnitude of the expected values
//! (`max |got - want| <= tol * max |want|`), with the reference computed in
//! f64 from the very inputs the backend saw (16-bit inputs rounded first):
//!
//! | output dtype | tolerance | why |
//! |---|---|---|
//! | f32  | 1e-5 | f32 arithmetic, any summation order |
//! | bf16 | 1e-2 | one rounding to 8 significant bits (2^-9 = 2e-3) plus a backend's 16-bit intermediates (a flash kernel's bf16 probabilities), as llm.c's bf16 checks |
//! | f16  | 2e-3 | one rounding to 11 significant bits (2^-12 = 2.4e-4) plus 16-bit intermediates |
//!
//! Everything a 16-bit case checks (its f32 statistics too) is held to the
//! case's tolerance. Rounding (`cast`, AdamW's 16-bit copy), copies,
//! gathers, top-k and the step statistics are checked bit for bit.

use half::{bf16, f16};
use kiln_abi::DType;

/// The tolerance (relative to max-abs) for outputs of a case in `dtype`.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::U32 => 1e-5,
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
    }
}

/// `x` rounded (nearest even) to the nearest value of `dtype`.
pub fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::BF16 => bf16::from_f32(x as f32).to_f64(),
        DType::F16 => f16::from_f32(x as f32).to_f64(),
        DType::U32 => x,
    }
}

/// Little-endian element bytes of `values` in `dtype` (each value rounded
/// to nearest; values already representable are encoded exactly).
pub fn encode(dtype: DType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &x in values {
        match dtype {
            DType::F32 => out.extend((x as f32).to_le_bytes()),
            DType::BF16 => out.extend(bf16::from_f32(x as f32).to_le_bytes()),
            DType::F16 => out.extend(f16::from_f32(x as f32).to_le_bytes()),
            DType::U32 => out.extend((x as u32).to_le_bytes()),
        }
    }
    out
}

pub fn encode_u32(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The values of little-endian element bytes, widened to f64.
pub fn decode(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
    }
}

/// `Err` with the worst element when `got` is further than `tol * max|want|`
/// from `want`. A NaN in `want` marks an element whose value is unspecified.
pub fn compare(got: &[f64], want: &[f64], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, want {}", got.len(), want.len()));
    }
    let scale = want
        .iter()
        .filter(|w| !w.is_nan())
        .fold(0f64, |m, w| m.max(w.abs()))
        .max(1e-30);
    let mut worst: Option<(usize, f64)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            continue;
        }
        let err = if g.is_nan() || (g.is_infinite() && g != w) {
            f64::INFINITY
        } else if g == w {
            0.0
        } else {
            (g - w).abs() / scale
        };
        if err > tol && worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, err)) => {
            let bad = got
                .iter()
                .zip(want)
                .filter(|(g, w)| !w.is_nan() && (*g - *w).abs() > tol * scale || g.is_nan())
                .count();
            Err(format!(
                "{bad} of {} elements off; worst at [{i}]: got {}, want {} \
                 (error {err:.2e} of max |want| {scale:.3e}, tolerance {tol:.0e})",
                got.len(),
                got[i],
                want[i]
            ))
        }
    }
}

/// `Err` naming the first differing element when the encodings differ.
pub fn compare_bits(dtype: DType, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let size = dtype.size();
    if got.len() != want.len() {
        return Err(format!(
            "{} elements, want {}",
            got.len() / size,
            want.len() / size
        ));
    }
    let i = (0..got.len() / size)
        .find(|&i| got[i * size..(i + 1) * size] != want[i * size..(i + 1) * size])
        .unwrap_or(0);
    let bad = (0..got.len() / size)
        .filter(|&i| got[i * size..(i + 1) * size] != want[i * size..(i + 1) * size])
        .count();
    let g = decode(dtype, &got[i * size..(i + 1) * size])[0];
    let w = decode(dtype, &want[i * size..(i + 1) * size])[0];
    Err(format!(
        "{bad} of {} elements differ in their bits; first at [{i}]: got {g:e} ({:02x?}), want {w:e} ({:02x?})",
        got.len() / size,
        &got[i * size..(i + 1) * size],
        &want[i * size..(i + 1) * size],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_is_relative_to_max_abs_and_skips_unspecified() {
        assert!(compare(&[1.0, 100.0], &[1.0005, 100.0], 1e-5).is_ok());
        let e = compare(&[1.0, 100.0], &[1.01, 100.0], 1e-5).unwrap_err();
        assert!(e.contains("worst at [0]"), "{e}");
        assert!(compare(&[5.0, 1.0], &[f64::NAN, 1.0], 1e-5).is_ok());
        assert!(compare(&[f64::NAN], &[1.0], 1.0).is_err());
        assert!(compare(&[f64::INFINITY], &[f64::INFINITY], 0.0).is_ok());
        assert!(compare(&[1.0], &[1.0, 2.0], 1.0).is_err());
    }

    #[test]
    fn encodings_round_trip() {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let v: Vec<f64> = [0.5, -1.25, 3.0, 0.0].to_vec();
            assert_eq!(decode(dt, &encode(dt, &v)), v);
            assert_eq!(round_to(dt, 0.1), decode(dt, &encode(dt, &[0.1]))[0]);
        }
        let e = compare_bits(
            DType::F32,
            &encode(DType::F32, &[1.0, 2.0]),
            &encode(DType::F32, &[1.0, 3.0]),
        )
        .unwrap_err();
        assert!(e.contains("first at [1]"), "{e}");
    }
}
