//! `lova-fast bench --roofline`: prints the roofline model of the planned
//! sampler step (`lova_fast::roofline`) for each clip length, as a table or
//! as JSON. Computed from the graph: needs no GPU and no weights.

use anyhow::{Context, Result};

use lova_fast::config::LovaConfig;
use lova_fast::graph::DType;
use lova_fast::roofline::{self, ClipPrediction, Settings};

/// What `bench --roofline --json` prints.
#[derive(serde::Serialize)]
struct Report {
    /// What the figures are.
    model: &'static str,
    config: String,
    settings: Settings,
    clips: Vec<ClipPrediction>,
}

const WHAT: &str = "roofline prediction of one sampler step (DiT cond + uncond, CFG, DPM++ 3M SDE update) on the \
                    CUDA backend as it runs today, from the planned step graph: per launch max(FLOP / tensor peak, \
                    bytes / bandwidth), plus the launch overhead; a floor for today's kernels, not a measurement";

/// Plans each clip's step from `config` and prints its roofline.
pub fn run(config: &LovaConfig, config_name: String, seconds: &[f64], settings: Settings, json: bool) -> Result<()> {
    if !(settings.launch_overhead_us.is_finite() && settings.launch_overhead_us >= 0.0) {
        anyhow::bail!("--launch-us must be a number of microseconds, 0 or more");
    }
    let activations = if settings.f32_activations { DType::F32 } else { DType::F16 };
    let mut clips = Vec::with_capacity(seconds.len());
    for &s in seconds {
        let step = roofline::plan_step_with(config, s, activations).with_context(|| format!("a {s} s clip"))?;
        clips.push(roofline::predict(&step, &settings));
    }
    let report = Report { model: WHAT, config: config_name, settings, clips };
    let table = format_table(&report);
    if json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 * 1e-6
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 * 1e-9
}

fn format_table(r: &Report) -> String {
    let s = &r.settings;
    let g = &s.gpu;
    let mut out = format!("{WHAT}\nconfig: {}\n", r.config);
    out += &format!(
        "peaks: {}: {} TFLOP/s dense fp16 tensor core, {} GB/s memory ({})\n",
        g.name, g.tensor_tflops, g.bandwidth_gbps, g.source
    );
    out += &if s.captured {
        format!(
            "launches: the step is a captured CUDA graph (the default): the host launches the graph and the noise \
             kernel, {} us each (--uncaptured: every kernel)\n",
            s.launch_overhead_us
        )
    } else {
        format!("launches: plain launches (LOVA_CUDA_GRAPHS=0), {} us each\n", s.launch_overhead_us)
    };
    out += if s.f32_activations {
        "activations: the DiT's block activations in f32 (LOVA_CUDA_ACTIVATIONS=f32), the residual stream f32\n"
    } else {
        "activations: the DiT's block activations in fp16 (the default), the residual stream f32\n"
    };
    for c in &r.clips {
        out += &format!(
            "\n{} s clip: {} frames, {} latent frames, {} tokens per sequence (x2: cond + uncond)\n",
            c.seconds, c.frames, c.latent_frames, c.tokens
        );
        out += &format!(
            "{:<52} {:>8} {:>9} {:>9} {:>10} {:>12} {:>8}\n",
            "op / kernel", "launches", "GFLOP", "MB read", "MB written", "predicted us", "bound"
        );
        for k in &c.kinds {
            out += &format!(
                "{:<52} {:>8} {:>9.1} {:>9.1} {:>10.1} {:>12.1} {:>8}\n",
                format!("{} / {}", k.op, k.kernel),
                k.launches,
                k.flops as f64 * 1e-9,
                mb(k.bytes_read),
                mb(k.bytes_written),
                k.predicted_us,
                k.bound
            );
        }
        out += &format!(
            "{:<52} {:>8} {:>9.1} {:>9.1} {:>10.1} {:>12.1}\n",
            "total",
            c.launches,
            c.flops as f64 * 1e-9,
            mb(c.bytes_read),
            mb(c.bytes_written),
            (c.predicted_ms - c.overhead_ms) * 1e3
        );
        out += &format!(
            "bytes {:.2} GB: weights {:.2} GB, activations and tables read {:.2} GB, written {:.2} GB; flash \
             attention's per-tile K/V re-reads, from L2 and not counted: {:.2} GB\n",
            gb(c.bytes),
            gb(c.weight_bytes),
            gb(c.bytes_read - c.weight_bytes),
            gb(c.bytes_written),
            gb(c.attention_kv_l2_bytes)
        );
        out += &format!(
            "predicted step: {:.2} ms = launches at their roofline {:.2} ms + {} host launches {:.3} ms \
             (all compute at peak: {:.2} ms; all bytes at full bandwidth: {:.2} ms)\n",
            c.predicted_ms,
            c.predicted_ms - c.overhead_ms,
            c.host_launches,
            c.overhead_ms,
            c.compute_ms,
            c.memory_ms
        );
    }
    out += &format!(
        "\n{:>8} {:>7} {:>9} {:>8} {:>9} {:>13}\n",
        "seconds", "tokens", "GFLOP", "GB", "launches", "predicted ms"
    );
    for c in &r.clips {
        out += &format!(
            "{:>8} {:>7} {:>9.1} {:>8.2} {:>9} {:>13.2}\n",
            c.seconds,
            c.tokens,
            c.flops as f64 * 1e-9,
            gb(c.bytes),
            c.launches,
            c.predicted_ms
        );
    }
    out
}
