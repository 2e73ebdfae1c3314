//! The library's `Pipeline` as an embedding program uses it: the example
//! program against the CLI, batches with a broken request, cancellation mid-run,
//! progress events, and the device choice.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, lova_fast, ok, s, tiny_engine_with_clip};
use lova_fast::engine::WeightSource;
use lova_fast::tensor::HostTensor;
use lova_fast::{CancelToken, Device, Error, Event, Input, Pipeline, PipelineOptions, Request, Stage};

const STEPS: usize = 6;

fn require_ffmpeg() {
    if let Err(e) = lova_fast::video::ffmpeg::check_tools() {
        panic!("these tests need FFmpeg: {e}");
    }
}

/// The tiny engine (with CLIP) on the CPU.
fn tiny_pipeline(engine: &Path) -> Pipeline {
    let options = PipelineOptions { device: Device::Cpu, ..Default::default() };
    Pipeline::open(&WeightSource::Engine(engine), &options).unwrap()
}

fn tiny_features(frames: usize, seed: u64) -> HostTensor {
    let f = lova_fast::weights::read_single_tensor(&fixture("tiny/features.safetensors"), "features", None).unwrap();
    let cols = f.shape[1];
    // Rows of the fixture, cycled and shifted per seed: distinct clips of any length.
    let data = (0..frames * cols).map(|i| f.data[(i + seed as usize * cols) % f.data.len()]).collect();
    HostTensor::new(vec![frames, cols], data)
}

fn features_request(frames: usize, seed: u64) -> Request {
    Request::new(Input::Features { features: tiny_features(frames, seed), fps: None }).seed(seed).steps(STEPS)
}

fn audio_of(result: &lova_fast::Result<lova_fast::Output>) -> &[f32] {
    &result.as_ref().expect("request succeeds").audio.as_ref().expect("audio").data
}

/// The example program (`examples/embed.rs`), which `cargo test` builds next to the tests.
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let exe = deps.parent().unwrap().join("examples").join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "{} not built (cargo test builds the examples)", exe.display());
    exe
}

/// `examples/embed.rs` writes the same bytes as `lova-fast infer` for a features
/// file and for a video (through CLIP).
#[test]
fn the_example_writes_the_same_wav_as_the_cli() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let video = fixture("video/h264_0.5s.mp4");
    for input in [fixture("tiny/features.safetensors"), video] {
        let (from_cli, from_example) = (dir.path().join("cli.wav"), dir.path().join("example.wav"));
        ok(&lova_fast(&[
            "infer",
            s(&input),
            "--weights",
            s(&engine),
            "-o",
            s(&from_cli),
            "--seed",
            "7",
            "--steps",
            "5",
        ]));
        let o = std::process::Command::new(example_binary())
            .args([s(&engine), s(&input), s(&from_example), "--seed", "7", "--steps", "5"])
            .output()
            .unwrap();
        ok(&o);
        let (a, b) = (std::fs::read(&from_cli).unwrap(), std::fs::read(&from_example).unwrap());
        assert!(a.len() > 44, "{}: empty WAV", input.display());
        assert!(a == b, "{}: the example's WAV differs from the CLI's", input.display());
    }
}

/// One bad request in a batch gets its error; the others get the audio they get alone.
#[test]
fn a_broken_request_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let mut pipeline = tiny_pipeline(&engine);
    let good = [features_request(9, 1), features_request(23, 2), features_request(4, 3)];
    let alone: Vec<Vec<f32>> = good.iter().map(|r| audio_of(&pipeline.generate(r.clone())).to_vec()).collect();

    let mut nan = tiny_features(7, 4);
    nan.data[5] = f32::NAN;
    let broken = [
        Request::new(Input::Features { features: nan, fps: None }).seed(4).steps(STEPS),
        // Past the model's 139.3 s limit.
        features_request(16, 5).seconds(150.0),
        Request::new(Input::Video(dir.path().join("no such video.mp4"))).seed(6).steps(STEPS),
    ];
    let batch = vec![
        broken[0].clone(),
        good[0].clone(),
        broken[1].clone(),
        good[1].clone(),
        broken[2].clone(),
        good[2].clone(),
    ];
    let results = pipeline.generate_many(batch, &mut lova_fast::pipeline::NoProgress);
    assert_eq!(results.len(), 6);
    for (i, want) in [(1, &alone[0]), (3, &alone[1]), (5, &alone[2])] {
        assert!(audio_of(&results[i]) == want.as_slice(), "request {i}: differs from its run alone");
        assert_eq!(results[i].as_ref().unwrap().sampling.requests, 3, "the good requests were sampled together");
    }
    let message = |i: usize| results[i].as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message(0).contains("non-finite"), "{}", message(0));
    assert!(message(2).contains("139.") && message(2).contains("position table"), "{}", message(2));
    assert!(message(4).contains("no such video.mp4"), "{}", message(4));
}

/// A request cancelled during sampling ends with `Cancelled` within one step and
/// leaves the batch; the others get the audio they get alone. Progress events
/// come in order, with the right counts.
#[test]
fn cancelling_mid_run_frees_the_request_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let mut pipeline = tiny_pipeline(&engine);
    let (a, b) = (features_request(11, 1), features_request(30, 2));
    let alone_a = audio_of(&pipeline.generate(a.clone())).to_vec();

    let token = CancelToken::new();
    let requests = vec![a, b.cancel_token(token.clone())];
    let mut events: Vec<Event> = Vec::new();
    let mut progress = |e: &Event| {
        if e.request == 1 && e.stage == Stage::Sampling && e.done == 2 {
            token.cancel();
        }
        events.push(*e);
    };
    let results = pipeline.generate_many(requests, &mut progress);
    assert!(matches!(results[1], Err(Error::Cancelled)), "{:?}", results[1].as_ref().err());
    assert!(audio_of(&results[0]) == alone_a.as_slice(), "the request left in the batch changed");

    let steps_of = |r: usize| -> Vec<usize> {
        events.iter().filter(|e| e.request == r && e.stage == Stage::Sampling).map(|e| e.done).collect()
    };
    assert_eq!(steps_of(0), (1..=STEPS).collect::<Vec<_>>(), "every step of the kept request, in order");
    assert_eq!(steps_of(1), vec![1, 2], "no step after the one the request was cancelled in");
    assert!(events.iter().all(|e| e.total > 0 && e.done <= e.total));
    // The kept request's stages in order: sampling, then its VAE windows (done 0..=total).
    let stages: Vec<Stage> = events.iter().filter(|e| e.request == 0).map(|e| e.stage).collect();
    let first_vae = stages.iter().position(|s| *s == Stage::Vae).expect("VAE events");
    assert!(
        stages[..first_vae].iter().all(|s| *s == Stage::Sampling)
            && stages[first_vae..].iter().all(|s| *s == Stage::Vae)
    );
    assert!(!events.iter().any(|e| e.request == 1 && e.stage == Stage::Vae), "a cancelled request was decoded");
    let vae: Vec<&Event> = events.iter().filter(|e| e.request == 0 && e.stage == Stage::Vae).collect();
    assert!(vae.iter().all(|e| e.total == vae[0].total), "one VAE total per request: {vae:?}");
    assert_eq!(vae.last().map(|e| e.done), Some(vae[0].total), "the VAE ends at its total: {vae:?}");
}

/// Video input reports its decoding and CLIP progress frame by frame, up to N,
/// and a token cancelled before the start ends the request at once.
#[test]
fn video_progress_and_cancel_before_start() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let mut pipeline = tiny_pipeline(&engine);
    let video = Request::new(Input::Video(fixture("video/h264_25fps.mp4"))).seed(1).steps(2);
    let frames = video.plan(pipeline.config()).unwrap().frames;
    let mut events = Vec::new();
    let output = pipeline.generate_with_progress(video.clone(), &mut |e: &Event| events.push(*e)).unwrap();
    assert_eq!(output.frames, frames);
    assert_eq!(output.features.shape[0], frames);
    for stage in [Stage::Decode, Stage::Clip] {
        let done: Vec<usize> = events.iter().filter(|e| e.stage == stage).map(|e| e.done).collect();
        assert_eq!(done.last(), Some(&frames), "{stage:?}: {done:?}");
        assert!(done.windows(2).all(|w| w[0] < w[1]), "{stage:?} not increasing: {done:?}");
    }
    let token = CancelToken::new();
    token.cancel();
    let result = pipeline.generate(video.cancel_token(token));
    assert!(matches!(result, Err(Error::Cancelled)), "{:?}", result.err());
}

/// Decoded frames in memory give the same audio as the same frames in a folder
/// of images (both sampled by the same rule).
#[test]
fn frames_in_memory_equal_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let mut pipeline = tiny_pipeline(&engine);
    let frames: Vec<lova_fast::video::RgbImage> = (0..12u8)
        .map(|i| lova_fast::video::RgbImage {
            width: 40,
            height: 30,
            data: (0..40 * 30 * 3).map(|p| (p as u8).wrapping_mul(i + 1)).collect(),
        })
        .collect();
    let folder = dir.path().join("frames");
    std::fs::create_dir(&folder).unwrap();
    for (i, f) in frames.iter().enumerate() {
        image::RgbImage::from_raw(40, 30, f.data.clone()).unwrap().save(folder.join(format!("{i:03}.png"))).unwrap();
    }
    let from_memory = pipeline.generate(Request::new(Input::Frames { frames, fps: 6.0 }).seed(3).steps(3));
    let from_folder = pipeline.generate(Request::new(Input::ImageFolder { dir: folder, fps: 6.0 }).seed(3).steps(3));
    assert!(audio_of(&from_memory) == audio_of(&from_folder));
}

/// `Device::Auto` on a machine without a usable GPU runs on the CPU and says why
/// through the pipeline, not on stderr; `Pipeline` can move to another thread.
#[test]
fn auto_device_falls_back_with_a_reason() {
    fn is_send<T: Send>() {}
    is_send::<Pipeline>();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let pipeline = Pipeline::open_engine(&engine, Device::Auto).unwrap();
    if lova_fast::backend::CudaBackend::new(0).is_ok() {
        assert!(pipeline.device_note().is_none());
        return;
    }
    let note = pipeline.device_note().expect("a reason for the CPU");
    assert!(note.contains("CUDA"), "{note}");
    assert!(pipeline.device_name().starts_with("cpu"), "{}", pipeline.device_name());
    let pipeline = std::thread::spawn(move || pipeline).join().unwrap();
    assert!(pipeline.has_clip());
}

/// `Sampling::retain` goes on without a request: the others' latents are bit for
/// bit those of a run without it from the start, and the arena shrinks.
#[test]
fn a_batch_without_a_request_goes_on_bit_for_bit() {
    use lova_fast::backend::CpuBackend;
    use lova_fast::sampler::{Request as SamplerRequest, RequestNoise, SamplerSettings, Sampling};
    let config = lova_fast::config::LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let ckpt = lova_fast::weights::SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let dit =
        lova_fast::models::Dit::load(&CpuBackend, &ckpt, &config.dit, lova_fast::models::dit::DIT_PREFIX).unwrap();
    let request = |frames: usize, latent_len: usize, seed: u64| SamplerRequest {
        features: tiny_features(frames, seed),
        latent_len,
        cfg_scale: 4.0,
        noise: RequestNoise { seed, initial: None, steps: None },
    };
    let all = [request(5, 9, 1), request(12, 31, 2), request(3, 4, 3)];
    let settings = SamplerSettings { steps: 7, ..Default::default() };
    let mut full = Sampling::new(&CpuBackend, &dit, &all, &settings).unwrap();
    let full_arena = full.arena_bytes();
    for _ in 0..3 {
        assert!(full.step().unwrap());
    }
    let mut kept = full.retain(|b| b != 1).unwrap().expect("two requests kept");
    assert_eq!(kept.steps_done(), 3);
    assert_eq!(kept.requests().len(), 2);
    assert!(kept.arena_bytes() < full_arena, "{} >= {full_arena}", kept.arena_bytes());
    while kept.step().unwrap() {}
    let pair = [all[0].clone(), all[2].clone()];
    let want = lova_fast::sampler::sample(&CpuBackend, &dit, &pair, &settings, &mut |_, _| {}).unwrap();
    let got = kept.latents().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(g.data == w.data, "latents differ from a batch without the request");
    }
    let none = Sampling::new(&CpuBackend, &dit, &all, &settings).unwrap().retain(|_| false).unwrap();
    assert!(none.is_none());
}

/// Step-level continuous batching at the sampler: requests with their own
/// step counts and eta join a running batch at different steps and leave it
/// when done (`Sampling::recompose`); each one's latents are bit for bit those
/// it gets sampled alone.
#[test]
fn requests_joining_and_leaving_a_running_batch_get_their_latents_alone() {
    use lova_fast::backend::CpuBackend;
    let config = lova_fast::config::LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let ckpt = lova_fast::weights::SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let dit =
        lova_fast::models::Dit::load(&CpuBackend, &ckpt, &config.dit, lova_fast::models::dit::DIT_PREFIX).unwrap();
    let jobs = common::mixed_joining_jobs(tiny_features);
    let (got, compositions) = common::run_joining(&CpuBackend, &dit, &jobs);
    assert!(compositions >= 4, "the batch changed {compositions} times");
    for (j, ((request, settings), _)) in jobs.iter().enumerate() {
        let alone =
            lova_fast::sampler::sample(&CpuBackend, &dit, std::slice::from_ref(request), settings, &mut |_, _| {})
                .unwrap();
        assert!(got[j] == alone[0].data, "job {j}: latents differ from the request sampled alone");
    }
}

/// A batch whose requests finish at different steps cannot step on with the
/// finished ones in it: the caller must let them go first.
#[test]
fn a_batch_does_not_step_past_a_finished_request() {
    use lova_fast::backend::CpuBackend;
    use lova_fast::sampler::{Request as SamplerRequest, RequestNoise, SamplerSettings, Sampling};
    let config = lova_fast::config::LovaConfig::from_file(&fixture("tiny/model_config.json")).unwrap();
    let ckpt = lova_fast::weights::SafetensorsFile::open(&fixture("tiny/checkpoint.safetensors")).unwrap();
    let dit =
        lova_fast::models::Dit::load(&CpuBackend, &ckpt, &config.dit, lova_fast::models::dit::DIT_PREFIX).unwrap();
    let request = |seed| SamplerRequest {
        features: tiny_features(4, seed),
        latent_len: 5,
        cfg_scale: 5.0,
        noise: RequestNoise { seed, initial: None, steps: None },
    };
    let settings = |steps| SamplerSettings { steps, ..Default::default() };
    let mut s =
        Sampling::with_settings(&CpuBackend, &dit, vec![(request(1), settings(1)), (request(2), settings(3))]).unwrap();
    assert!(s.step().unwrap());
    assert!(s.is_finished(0) && !s.is_finished(1));
    let e = s.step().unwrap_err().to_string();
    assert!(e.contains("must leave the batch"), "{e}");
    let mut s = s.recompose(|b| b == 1, Vec::new()).unwrap().unwrap();
    assert_eq!(s.progress_of(0), (1, 3));
    while s.step().unwrap() {}
    assert_eq!(s.progress_of(0), (3, 3));
}

/// The scheduler (the engine of `serve`): jobs of mixed lengths and step
/// counts arrive while a batch runs (sent from the step callback, so that they
/// join at known steps), share the batch, and each one's audio is bit for bit
/// that of `generate` alone; a job cancelled mid-sampling ends `Cancelled`
/// without disturbing the others; one-at-a-time mode never batches.
#[test]
fn the_scheduler_batches_jobs_that_join_at_different_steps() {
    use lova_fast::pipeline::{Job, JobEvent, SchedulerOptions, StepStats};
    use std::sync::{Arc, Mutex, mpsc};
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine_with_clip(dir.path());
    let requests: Vec<Request> = vec![
        features_request(5, 1),
        features_request(16, 2).steps(9),
        Request::new(Input::Video(fixture("video/h264_0.5s.mp4"))).seed(3).steps(4),
        features_request(3, 4).steps(2),
        features_request(11, 5),
    ];
    // The step of the batch after which each request is sent (0: at once).
    let send_after = [0usize, 0, 2, 3, 5];
    let cancel = CancelToken::new();
    let cancelled = features_request(8, 6).steps(40).cancel_token(cancel.clone());

    let run = |continuous: bool| {
        let (send, receive) = mpsc::channel::<Job>();
        let results: Arc<Mutex<Vec<Option<lova_fast::Result<lova_fast::Output>>>>> =
            Arc::new(Mutex::new((0..=requests.len()).map(|_| None).collect()));
        let job = |i: usize, request: Request| {
            let results = results.clone();
            let mut started = false;
            Job {
                request,
                events: Box::new(move |e| match e {
                    JobEvent::Started => started = true,
                    JobEvent::Progress(_) => assert!(started, "progress before start"),
                    JobEvent::Finished(r) => results.lock().unwrap()[i] = Some(r),
                }),
            }
        };
        let stats: Arc<Mutex<Vec<StepStats>>> = Arc::default();
        let mut pending: Vec<(usize, Job)> =
            requests.iter().cloned().enumerate().map(|(i, r)| (i, job(i, r))).collect();
        pending.push((requests.len(), job(requests.len(), cancelled.clone())));
        let mut at_once = Vec::new();
        let mut later = Vec::new();
        for (i, j) in pending {
            let after = send_after.get(i).copied().unwrap_or(1);
            if after == 0 { at_once.push(j) } else { later.push((after, j)) }
        }
        for j in at_once {
            send.send(j).unwrap();
        }
        let sender = Mutex::new(Some(send));
        let (stats_in, cancel) = (stats.clone(), cancel.clone());
        let mut steps = 0;
        let options = SchedulerOptions {
            continuous,
            max_batch_rows: None,
            on_step: Some(Box::new(move |s: &StepStats| {
                stats_in.lock().unwrap().push(*s);
                steps += 1;
                let guard = sender.lock().unwrap();
                for (after, j) in std::mem::take(&mut later) {
                    if after <= steps { guard.as_ref().unwrap().send(j).unwrap() } else { later.push((after, j)) }
                }
                if steps == 8 {
                    cancel.cancel();
                }
                drop(guard);
                if later.is_empty() {
                    // Every job sent: closing the channel lets the scheduler return when they are done.
                    sender.lock().unwrap().take();
                }
            })),
        };
        let mut pipeline = tiny_pipeline(&engine);
        pipeline.run_scheduler(receive, options);
        let results = std::mem::take(&mut *results.lock().unwrap());
        let stats = stats.lock().unwrap().clone();
        (results.into_iter().map(|r| r.expect("every job finished")).collect::<Vec<_>>(), stats)
    };

    let mut alone = tiny_pipeline(&engine);
    let want: Vec<_> = requests.iter().map(|r| alone.generate(r.clone()).unwrap()).collect();
    for continuous in [true, false] {
        let (got, stats) = run(continuous);
        for (i, w) in want.iter().enumerate() {
            let g = got[i].as_ref().unwrap_or_else(|e| panic!("job {i}: {e}"));
            assert_eq!(g.seed, w.seed);
            assert!(
                g.audio.as_ref().unwrap().data == w.audio.as_ref().unwrap().data,
                "job {i}: audio differs from generate alone"
            );
        }
        assert!(matches!(got[requests.len()], Err(Error::Cancelled)), "{:?}", got[requests.len()].as_ref().err());
        let most = stats.iter().map(|s| s.requests).max().unwrap();
        if continuous {
            assert!(most >= 3, "at most {most} requests were batched");
        } else {
            assert_eq!(most, 1, "one-at-a-time mode batched requests");
        }
    }
}
