//! Noise levels and the v-objective denoiser scalings (lova-model.md section 5),
//! all in f64.

/// The "polyexponential" schedule: `steps` sigmas from `sigma_max` down to
/// `sigma_min`, log-spaced through `ramp^rho`, then a final 0.
pub fn polyexponential_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (lmin, lmax) = (sigma_min.ln(), sigma_max.ln());
    let mut sigmas: Vec<f64> = (0..steps)
        .map(|i| {
            let ramp = if steps == 1 { 1.0 } else { (1.0 - i as f64 / (steps - 1) as f64).powf(rho) };
            (ramp * (lmax - lmin) + lmin).exp()
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// VDenoiser with sigma_data = 1: `denoised = v * c_out + x * c_skip`, the model
/// sees `x * c_in` at time `t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VScalings {
    /// Factor of the noisy input `x` in `denoised`: `1 / (sigma^2 + 1)`.
    pub c_skip: f64,
    /// Factor of the model output `v` in `denoised`: `-sigma / sqrt(sigma^2 + 1)`.
    pub c_out: f64,
    /// Factor applied to `x` before the model: `1 / sqrt(sigma^2 + 1)`.
    pub c_in: f64,
    /// Model timestep in [0, 1): `atan(sigma) * 2 / pi`.
    pub t: f64,
}

impl VScalings {
    /// Scalings at noise level `sigma` (>= 0).
    pub fn at(sigma: f64) -> Self {
        let s2 = sigma * sigma + 1.0;
        VScalings {
            c_skip: 1.0 / s2,
            c_out: -sigma / s2.sqrt(),
            c_in: 1.0 / s2.sqrt(),
            t: sigma.atan() * 2.0 / std::f64::consts::PI,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_from_max_to_min_then_zero() {
        let s = polyexponential_sigmas(150, 0.3, 500.0, 1.0);
        assert_eq!(s.len(), 151);
        assert!((s[0] - 500.0).abs() < 1e-9 && (s[149] - 0.3).abs() < 1e-12 && s[150] == 0.0);
        // rho = 1: equal steps in log sigma.
        let step = s[0].ln() - s[1].ln();
        for w in s[..150].windows(2) {
            assert!((w[0].ln() - w[1].ln() - step).abs() < 1e-12);
        }
    }

    #[test]
    fn v_scalings_reconstruct_x_at_sigma_zero_and_t_spans_0_1() {
        let z = VScalings::at(0.0);
        assert_eq!((z.c_skip, z.c_out, z.c_in, z.t), (1.0, 0.0, 1.0, 0.0));
        let s = VScalings::at(1.0);
        assert!((s.c_skip - 0.5).abs() < 1e-15 && (s.t - 0.5).abs() < 1e-15);
        assert!((s.c_out + 1.0 / 2f64.sqrt()).abs() < 1e-15);
        assert!(VScalings::at(500.0).t > 0.998);
    }
}
