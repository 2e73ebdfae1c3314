//! `lova-fast demo`: the whole pipeline on a tiny random-weight model and a
//! synthetic test video (FFmpeg's `testsrc`), in a temporary folder. Its audio
//! is noise: the weights are random.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};

use lova_fast::config::LovaConfig;
use lova_fast::models::ClipVisionConfig;
use lova_fast::video::ffmpeg;

use lova_fast::config::TINY_CONFIG_JSON as TINY_CONFIG;

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the files here instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

#[derive(Parser)]
struct InferOnly {
    #[command(flatten)]
    infer: super::infer::InferArgs,
}

pub fn run(args: DemoArgs) -> Result<()> {
    ffmpeg::check_tools()?;
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let dir = args.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    eprintln!(
        "lova-fast demo: a tiny model with RANDOM weights, so the audio is noise; this only shows the pipeline works"
    );
    let engine = dir.join("tiny-random.safetensors");
    let config = LovaConfig::from_json_str(TINY_CONFIG)?;
    let clip = ClipVisionConfig::tiny(config.dit.cond_token_dim);
    lova_fast::engine::write_random_engine(&engine, &config, TINY_CONFIG, &clip)?;
    let video = dir.join("testsrc.mp4");
    let status = Command::new(ffmpeg::find_tool("ffmpeg")?)
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&video)
        .stdin(Stdio::null())
        .status()
        .context("cannot run ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg could not make the test video (is libx264 enabled?)");
    }
    let wav = dir.join("testsrc.wav");
    let muxed = dir.join("testsrc.with-audio.mp4");
    let argv = ["demo", video.to_str().unwrap_or_default(), "--weights", engine.to_str().unwrap_or_default()];
    let rest = [
        "-o",
        wav.to_str().unwrap_or_default(),
        "--mux",
        muxed.to_str().unwrap_or_default(),
        "--steps",
        "10",
        "--seed",
        "1",
    ];
    let parsed = InferOnly::try_parse_from(argv.iter().chain(rest.iter())).context("demo arguments")?;
    super::infer::run(parsed.infer)?;
    match &args.keep {
        Some(d) => eprintln!("demo files kept in {}", d.display()),
        None => eprintln!("demo done (temporary files removed; --keep DIR keeps them)"),
    }
    Ok(())
}
