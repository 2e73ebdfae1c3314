//! lova-fast as a library: a video (or a CLIP features file) to a WAV file.
//!
//! `cargo run --release --example embed -- ENGINE.safetensors INPUT OUT.wav [--seed S] [--steps N]`
//!
//! INPUT is a video (anything FFmpeg reads) or a `.safetensors` features file.
//! On the CPU it writes the same bytes as
//! `lova-fast infer INPUT --weights ENGINE -o OUT.wav --seed S --steps N`.

use std::path::PathBuf;

use lova_fast::audio::SampleFormat;
use lova_fast::{Device, Event, Input, Pipeline, Request, Stage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed ENGINE.safetensors INPUT OUT.wav [--seed S] [--steps N]";
    let (Some(engine), Some(input), Some(out)) = (args.next(), args.next(), args.next()) else {
        return Err(usage.into());
    };
    let input = PathBuf::from(input);
    let input = if input.extension().is_some_and(|e| e == "safetensors") {
        Input::FeaturesFile(input)
    } else {
        Input::Video(input)
    };
    let mut request = Request::new(input);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--seed" => request = request.seed(value.parse()?),
            "--steps" => request = request.steps(value.parse()?),
            _ => return Err(usage.into()),
        }
    }

    // `Device::Auto`: the GPU when CUDA is usable, else the CPU (and the reason why).
    let mut pipeline = Pipeline::open_engine(&engine, Device::Auto)?;
    if let Some(note) = pipeline.device_note() {
        eprintln!("note: {note}");
    }
    let mut progress = |e: &Event| {
        if e.stage == Stage::Sampling && e.done.is_multiple_of(10) {
            eprintln!("step {}/{}", e.done, e.total);
        }
    };
    let output = pipeline.generate_with_progress(request, &mut progress)?;
    output.write_wav(out.as_ref(), SampleFormat::Pcm16)?;
    eprintln!(
        "{out}: {:.2} s of audio, seed {}, on {} (sampling {:.2} s)",
        output.seconds,
        output.seed,
        pipeline.device_name(),
        output.timings.sampling_s
    );
    Ok(())
}
