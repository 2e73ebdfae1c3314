//! DPM++ 3M SDE (k-diffusion's `sample_dpmpp_3m_sde`) as one linear update:
//!
//! `x' = a x + b denoised + c d1 + d d2 + e z`
//!
//! where d1, d2 are the two previous `denoised`. The host computes a..e in f64
//! from the sigmas and the step history; the device then runs one element-wise
//! kernel, whichever of the first-, second- or third-order branches applies.
//! Expanding k-diffusion's expressions (section 5 of lova-model.md):
//! - base: `a = exp(-he)`, `b = -expm1(-he)`, he = h (eta + 1);
//! - with h_1 only: `phi2 (den - d1) / r` adds `phi2/r` to b and `-phi2/r` to c;
//! - with h_1 and h_2: `phi2 dd1 - phi3 dd2` where D0 = (den - d1)/r0,
//!   D1 = (d1 - d2)/r1 gives `A D0 + B' D1` with A = phi2 (1 + r0/(r0+r1)) - phi3/(r0+r1)
//!   and B' = (phi3 - phi2 r0)/(r0+r1); so b += A/r0, c += -A/r0 + B'/r1, d -= B'/r1;
//! - noise: `e = sigma' sqrt(-expm1(-2 h eta)) s_noise`;
//! - last step (sigma' = 0): `x' = denoised`.

/// Coefficients of one update (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpdateCoefficients {
    /// Factor of the current state `x` (`a`).
    pub x: f64,
    /// Factor of this step's denoised estimate (`b`).
    pub denoised: f64,
    /// Factor of the previous step's denoised estimate (`c`).
    pub d1: f64,
    /// Factor of the denoised estimate of two steps back (`d`).
    pub d2: f64,
    /// Factor of this step's N(0, 1) noise (`e`); 0 when eta is 0 or on the last step.
    pub noise: f64,
}

/// The step sizes of the two previous steps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dpmpp3mSde {
    h1: Option<f64>,
    h2: Option<f64>,
}

impl Dpmpp3mSde {
    /// A sampler before its first step (no history: the first update is first order).
    pub fn new() -> Self {
        Self::default()
    }

    /// Coefficients for the step from `sigma` to `sigma_next`; advances the history.
    pub fn step(&mut self, sigma: f64, sigma_next: f64, eta: f64, s_noise: f64) -> UpdateCoefficients {
        if sigma_next == 0.0 {
            return UpdateCoefficients { denoised: 1.0, ..Default::default() };
        }
        let h = sigma.ln() - sigma_next.ln();
        let he = h * (eta + 1.0);
        let mut k = UpdateCoefficients { x: (-he).exp(), denoised: -(-he).exp_m1(), ..Default::default() };
        let phi2 = (-he).exp_m1() / he + 1.0;
        match (self.h1, self.h2) {
            (Some(h1), Some(h2)) => {
                let (r0, r1) = (h1 / h, h2 / h);
                let phi3 = phi2 / he - 0.5;
                let a = phi2 * (1.0 + r0 / (r0 + r1)) - phi3 / (r0 + r1);
                let b = (phi3 - phi2 * r0) / (r0 + r1);
                k.denoised += a / r0;
                k.d1 += -a / r0 + b / r1;
                k.d2 -= b / r1;
            }
            (Some(h1), None) => {
                let r = h1 / h;
                k.denoised += phi2 / r;
                k.d1 -= phi2 / r;
            }
            _ => {}
        }
        if eta != 0.0 {
            k.noise = sigma_next * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise;
        }
        self.h2 = self.h1;
        self.h1 = Some(h);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::schedule::polyexponential_sigmas;

    /// k-diffusion's loop written out literally, on vectors, in f64.
    fn literal_k_diffusion(sigmas: &[f64], dens: &[Vec<f64>], zs: &[Vec<f64>], x0: &[f64], eta: f64) -> Vec<f64> {
        let mut x = x0.to_vec();
        let (mut d_1, mut d_2): (Option<Vec<f64>>, Option<Vec<f64>>) = (None, None);
        let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
        let mut h = 0.0;
        for i in 0..sigmas.len() - 1 {
            let den = &dens[i];
            if sigmas[i + 1] == 0.0 {
                x = den.clone();
            } else {
                h = sigmas[i].ln() - sigmas[i + 1].ln();
                let he = h * (eta + 1.0);
                x = x.iter().zip(den).map(|(x, d)| (-he).exp() * x + -(-he).exp_m1() * d).collect();
                let phi2 = (-he).exp_m1() / he + 1.0;
                if let (Some(h1), Some(h2)) = (h_1, h_2) {
                    let (r0, r1) = (h1 / h, h2 / h);
                    let phi3 = phi2 / he - 0.5;
                    let (p1, p2) = (d_1.as_ref().unwrap(), d_2.as_ref().unwrap());
                    for j in 0..x.len() {
                        let dd0 = (den[j] - p1[j]) / r0;
                        let dd1_ = (p1[j] - p2[j]) / r1;
                        let dd1 = dd0 + (dd0 - dd1_) * r0 / (r0 + r1);
                        let dd2 = (dd0 - dd1_) / (r0 + r1);
                        x[j] += phi2 * dd1 - phi3 * dd2;
                    }
                } else if let Some(h1) = h_1 {
                    let r = h1 / h;
                    let p1 = d_1.as_ref().unwrap();
                    for j in 0..x.len() {
                        x[j] += phi2 * (den[j] - p1[j]) / r;
                    }
                }
                if eta != 0.0 {
                    let c = sigmas[i + 1] * (-(-2.0 * h * eta).exp_m1()).sqrt();
                    for j in 0..x.len() {
                        x[j] += zs[i][j] * c;
                    }
                }
            }
            d_2 = d_1.take();
            d_1 = Some(den.clone());
            h_2 = h_1;
            h_1 = Some(h);
        }
        x
    }

    #[test]
    fn linear_form_equals_k_diffusion_for_every_branch() {
        for eta in [0.0, 1.0, 0.5] {
            let sigmas = polyexponential_sigmas(7, 0.3, 500.0, 1.0);
            let val = |i: usize, j: usize| (((i * 31 + j * 17) % 23) as f64 - 11.0) / 5.0;
            let dens: Vec<Vec<f64>> = (0..7).map(|i| (0..5).map(|j| val(i, j)).collect()).collect();
            let zs: Vec<Vec<f64>> = (0..7).map(|i| (0..5).map(|j| val(i + 40, j)).collect()).collect();
            let x0: Vec<f64> = (0..5).map(|j| val(99, j) * 500.0).collect();
            let want = literal_k_diffusion(&sigmas, &dens, &zs, &x0, eta);

            let (mut x, mut d1, mut d2) = (x0.clone(), vec![0.0; 5], vec![0.0; 5]);
            let mut sampler = Dpmpp3mSde::new();
            for i in 0..7 {
                let k = sampler.step(sigmas[i], sigmas[i + 1], eta, 1.0);
                for j in 0..5 {
                    x[j] = k.x * x[j] + k.denoised * dens[i][j] + k.d1 * d1[j] + k.d2 * d2[j] + k.noise * zs[i][j];
                    d2[j] = d1[j];
                    d1[j] = dens[i][j];
                }
            }
            for j in 0..5 {
                assert!((x[j] - want[j]).abs() < 1e-9 * (1.0 + want[j].abs()), "eta {eta}: {} vs {}", x[j], want[j]);
            }
        }
    }
}
