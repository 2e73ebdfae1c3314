//! `lova-fast convert`: the original checkpoint -> one fp16 engine file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lova_fast::config::{LovaConfig, RELEASED_CONFIG_JSON};
use lova_fast::engine;
use lova_fast::output_paths::{NamedPath, check_outputs};

use super::check_output_path;

#[derive(Args)]
pub struct ConvertArgs {
    /// Original LoVA checkpoint (safetensors, fp32, PyTorch key names).
    #[arg(long, value_name = "LOVA.safetensors")]
    pub checkpoint: PathBuf,

    /// CLIP ViT-L/14 checkpoint (safetensors), OpenAI (`visual.*`) or Hugging Face
    /// (`vision_model.*`) layout; text-tower tensors are ignored. Without it the
    /// engine file runs from CLIP features only.
    #[arg(long, value_name = "CLIP.safetensors")]
    pub clip: Option<PathBuf>,

    /// LoVA-format model_config.json [default: the released vl30 config, built in].
    #[arg(long, value_name = "CONFIG.json")]
    pub config: Option<PathBuf>,

    /// Engine file to write.
    #[arg(short, long, value_name = "lova-fast.safetensors")]
    pub output: PathBuf,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    check_output_path(&args.output)?;
    let mut inputs = vec![NamedPath::new("--checkpoint", &args.checkpoint)];
    inputs.extend(args.clip.as_deref().map(|p| NamedPath::new("--clip", p)));
    inputs.extend(args.config.as_deref().map(|p| NamedPath::new("--config", p)));
    check_outputs(&inputs, &[NamedPath::new("-o", &args.output)])?;
    let (config, json) = match &args.config {
        Some(path) => {
            // Parsed first: `from_file` refuses a file too big to be a config before reading it.
            let config = LovaConfig::from_file(path)?;
            let text = std::fs::read_to_string(path).map_err(|e| lova_fast::Error::io(path, e))?;
            (config, text)
        }
        None => (LovaConfig::released(), RELEASED_CONFIG_JSON.to_string()),
    };
    let started = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("converting {bar:40} {pos}/{len} tensors [{elapsed_precise}]")
            .expect("valid progress template"),
    );
    if args.clip.is_none() {
        eprintln!("note: no --clip given: the engine file will run from CLIP features only, not from video");
    }
    let report =
        engine::convert(&args.checkpoint, args.clip.as_deref(), &config, &json, &args.output, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .with_context(|| format!("converting {}", args.checkpoint.display()))?;
    bar.finish_and_clear();
    let params: Vec<String> = report.parameters.iter().map(|(c, n)| format!("{c} {:.1} M", *n as f64 / 1e6)).collect();
    eprintln!(
        "wrote {} in {:.1} s: {} tensors, {:.1} MiB ({})",
        args.output.display(),
        started.elapsed().as_secs_f64(),
        report.tensors,
        report.bytes as f64 / (1 << 20) as f64,
        params.join(", ")
    );
    Ok(())
}
