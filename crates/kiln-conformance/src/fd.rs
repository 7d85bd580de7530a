//! Central finite differences in f64: the reference gradient every backward
//! op is checked against. With f64 and `H = 1e-5` the truncation error
//! (H^2 f'''/6, about 1e-11 for the smooth layers here) and the rounding
//! error (1e-16 / H) both sit far below the f32 tolerance.

const H: f64 = 1e-5;

/// `dL/dx` for `L = loss(x)`, one coordinate at a time.
pub fn grad(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + H;
            let up = loss(&x);
            x[i] = x0 - H;
            let down = loss(&x);
            x[i] = x0;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// `sum_i dout[i] * y[i]`: the scalar whose gradient is the vector-Jacobian
/// product a backward op computes.
pub fn dot(dout: &[f64], y: &[f64]) -> f64 {
    dout.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `a + b` elementwise (accumulated gradients: initial value + gradient).
pub fn plus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_analytic_gradient() {
        let x = [0.3, -1.2, 2.0];
        let g = grad(&x, |v| v[0] * v[0] * v[1] + v[2].sin());
        let want = [2.0 * 0.3 * -1.2, 0.09, 2f64.cos()];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-9, "{g:?}");
        }
    }
}
