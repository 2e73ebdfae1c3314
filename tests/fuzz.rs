//! A bounded mutation fuzzer over everything lova-fast reads from a file:
//! engine files (their safetensors header and the model config inside it),
//! model configs, features files and latents files. Each case is a mutated
//! copy of a valid file, handed in process to the library's parsers and
//! loaders as the CLI would (open, load the networks, decode, write the WAV),
//! and ends in one of three ways: a clean error, a success, or a crash (a
//! panic, caught here). An abort (a failed allocation, a stack overflow)
//! would end the whole run, which is why every size read from a file is
//! bounded before it is used.
//!
//! As a test: a fixed seed and a fixed number of cases (a few seconds). For a
//! long run, `tools/fuzz.sh SECONDS` sets `LOVA_FUZZ_SECONDS` (a time budget
//! instead of the case count) and optionally `LOVA_FUZZ_SEED`, and reads the
//! counts this prints. Outputs of successful cases are removed; anything else
//! left in the output folder after a case (a partial file) is counted.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Rng, fixture};
use lova_fast::audio::{SampleFormat, finish, samples_for_seconds, write_wav};
use lova_fast::backend::CpuBackend;
use lova_fast::config::LovaConfig;
use lova_fast::engine::{self, DIT_KEYS, WeightSource};
use lova_fast::models::{Dit, VaeDecoder, dit, vae};
use lova_fast::tensor::HostTensor;
use lova_fast::weights::{SafetensorsFile, read_features, read_latents, write_tensors_atomically};

/// Cases per target in the test (4 targets).
const TEST_CASES_PER_TARGET: usize = 120;
const DEFAULT_SEED: u64 = 20;

/// Values that break size and float handling: zero, negatives, powers of two
/// around 2^31/2^32/2^40/2^63, the largest integers, huge and tiny floats.
fn interesting_value(rng: &mut Rng) -> Value {
    let numbers: [Value; 22] = [
        0.into(),
        1.into(),
        2.into(),
        3.into(),
        (-1).into(),
        255.into(),
        65536.into(),
        (1u64 << 31).into(),
        (1u64 << 32).into(),
        (1u64 << 40).into(),
        878_320_143_102u64.into(),
        (1u64 << 63).into(),
        u64::MAX.into(),
        i64::MIN.into(),
        1e308.into(),
        (-1e308).into(),
        1e-308.into(),
        0.5.into(),
        3e38.into(),
        1e-9.into(),
        (-0.0).into(),
        7.into(),
    ];
    match rng.below(10) {
        0 => Value::String(
            rng.pick(&["", "F32", "F16", "I64", "BF16", "F33", "prepend", "adaLN", "lova-fast", "1"]).to_string(),
        ),
        1 => serde_json::json!([]),
        2 => Value::Array((0..rng.below(20)).map(|_| rng.pick(&numbers).clone()).collect()),
        3 => serde_json::json!({}),
        4 => Value::Null,
        5 => Value::Bool(rng.chance(50)),
        6 => Value::from(rng.next() >> rng.below(64)),
        _ => rng.pick(&numbers).clone(),
    }
}

/// Paths to every node of `v` (object keys and array indices).
fn node_paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(Step::Key(k.clone()));
                node_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                node_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// JSON text of `v`, with the first entry of the object at `dup` (if any) written twice.
fn to_text(v: &Value, dup: Option<&[Step]>, here: &mut Vec<Step>, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut first = true;
            let doubled = dup.is_some_and(|d| d.len() == here.len() && paths_equal(d, here));
            for (i, (k, child)) in map.iter().enumerate() {
                for _ in 0..if doubled && i == 0 { 2 } else { 1 } {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    here.push(Step::Key(k.clone()));
                    to_text(child, dup, here, out);
                    here.pop();
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, child) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                here.push(Step::Index(i));
                to_text(child, dup, here, out);
                here.pop();
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn paths_equal(a: &[Step], b: &[Step]) -> bool {
    a.iter().zip(b).all(|(x, y)| match (x, y) {
        (Step::Key(x), Step::Key(y)) => x == y,
        (Step::Index(x), Step::Index(y)) => x == y,
        _ => false,
    })
}

/// One structural mutation of JSON `text`: a node replaced by an interesting
/// value, removed, or an object's first key written twice; config strings
/// inside (the engine's `__metadata__.config`) are mutated recursively.
fn mutate_json(rng: &mut Rng, text: &str) -> String {
    let Ok(mut root) = serde_json::from_str::<Value>(text) else { return mutate_bytes_text(rng, text) };
    let mut paths = Vec::new();
    node_paths(&root, &mut Vec::new(), &mut paths);
    let mut dup = None;
    for _ in 0..1 + rng.below(3) {
        let path = rng.pick(&paths).clone();
        let node = node_mut(&mut root, &path);
        match rng.below(10) {
            0 if node.is_object() => dup = Some(path),
            1 => {
                if let (Some(Step::Key(k)), Some(parent)) = (path.last(), path.split_last().map(|(_, p)| p)) {
                    if let Some(map) = node_mut(&mut root, parent).as_object_mut() {
                        map.remove(k);
                    }
                    paths.retain(|p| p.len() < path.len() || !paths_equal(&p[..path.len()], &path));
                }
            }
            2 | 3 if node.as_str().is_some_and(|s| s.starts_with('{')) => {
                let inner = node.as_str().expect("a string").to_string();
                *node = Value::String(mutate_json(rng, &inner));
            }
            _ => {
                *node = interesting_value(rng);
                paths.retain(|p| p.len() <= path.len() || !paths_equal(&p[..path.len()], &path));
            }
        }
    }
    let mut out = String::new();
    to_text(&root, dup.as_deref(), &mut Vec::new(), &mut out);
    out
}

/// Byte-level damage to text: flips, JSON-significant characters, cuts, repeats.
fn mutate_bytes_text(rng: &mut Rng, text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    mutate_bytes(rng, &mut b, b"{}[]\":,0123456789e-.+ ");
    String::from_utf8_lossy(&b).into_owned()
}

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, alphabet: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(*rng.pick(alphabet));
            continue;
        }
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = *rng.pick(alphabet),
            2 => {
                let n = rng.below(16).min(b.len() - i);
                b.drain(i..i + n);
            }
            3 => {
                let n = rng.below(16).min(b.len() - i);
                let copy: Vec<u8> = b[i..i + n].to_vec();
                b.splice(i..i, copy);
            }
            4 => b.insert(i, *rng.pick(alphabet)),
            _ => b.truncate(i),
        }
    }
}

/// A safetensors file's length prefix, header text and data.
fn split(file: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    (String::from_utf8(file[8..8 + n].to_vec()).unwrap(), file[8 + n..].to_vec())
}

/// A mutated safetensors file from `header` and `data`: the header mutated
/// structurally or byte by byte, the length prefix usually right (so the
/// header is parsed) and sometimes wrong, the data sometimes damaged: values
/// set to NaN, infinities or huge numbers, or cut short.
fn mutate_safetensors(rng: &mut Rng, header: &str, data: &[u8]) -> Vec<u8> {
    // The configs inside an engine header are a few nodes among hundreds of
    // tensor entries: aim at them half of the time.
    if rng.chance(50)
        && let Ok(mut root) = serde_json::from_str::<Value>(header)
        && let Some(meta) = root.get_mut("__metadata__").and_then(Value::as_object_mut)
    {
        let keys: Vec<String> = meta.keys().filter(|k| k.contains("config")).cloned().collect();
        if !keys.is_empty() {
            let key = rng.pick(&keys).clone();
            let inner = meta[&key].as_str().unwrap_or_default().to_string();
            let mutated = if rng.chance(80) { mutate_json(rng, &inner) } else { mutate_bytes_text(rng, &inner) };
            meta.insert(key, Value::String(mutated));
            return assemble(rng, root.to_string(), data.to_vec());
        }
    }
    let header = match rng.below(10) {
        0..=5 => mutate_json(rng, header),
        6..=7 => mutate_bytes_text(rng, header),
        _ => header.to_string(),
    };
    let mut data = data.to_vec();
    if rng.chance(40) && data.len() >= 4 {
        for _ in 0..1 + rng.below(8) {
            let v: f32 = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, -3e38, 1e5, 1e-45, 0.0, 2e4]);
            let i = rng.below(data.len() / 4) * 4;
            let bytes =
                if rng.chance(50) { v.to_le_bytes().to_vec() } else { half::f16::from_f32(v).to_le_bytes().to_vec() };
            data[i..i + bytes.len()].copy_from_slice(&bytes);
        }
    }
    if rng.chance(10) {
        let keep = rng.below(data.len() + 1);
        data.truncate(keep);
    }
    assemble(rng, header, data)
}

/// Length prefix (usually right), header (usually padded) and data, sometimes cut short.
fn assemble(rng: &mut Rng, header: String, data: Vec<u8>) -> Vec<u8> {
    let mut header = header.into_bytes();
    while !(8 + header.len()).is_multiple_of(8) && rng.chance(90) {
        header.push(b' ');
    }
    let len = match rng.below(20) {
        0 => rng.next(),
        1 => header.len() as u64 + 1 + rng.below(64) as u64,
        2 => (header.len() as u64).saturating_sub(1 + rng.below(8) as u64),
        3 => u64::MAX - rng.below(8) as u64,
        _ => header.len() as u64,
    };
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    if rng.chance(5) {
        let cut = rng.below(out.len() + 1);
        out.truncate(cut);
    }
    out
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    errors: usize,
    successes: usize,
    crashes: usize,
    left_behind: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.errors += o.errors;
        self.successes += o.successes;
        self.crashes += o.crashes;
        self.left_behind += o.left_behind;
    }
}

/// What a case does with its mutated input; `out` is an empty folder for outputs.
type Case<'a> = dyn Fn(&Path, &Path) -> lova_fast::Result<()> + 'a;

/// Makes one mutated input.
type Mutator<'a> = dyn Fn(&mut Rng) -> Vec<u8> + 'a;

/// The files the fuzzer mutates and the model the latents decode with.
struct Seeds {
    engine_header: String,
    engine_data: Vec<u8>,
    config: String,
    features_header: String,
    features_data: Vec<u8>,
    latents_header: String,
    latents_data: Vec<u8>,
    vae: VaeDecoder<CpuBackend>,
    sample_rate: u32,
    _dir: tempfile::TempDir,
}

fn seeds() -> Seeds {
    let dir = tempfile::tempdir().unwrap();
    let config_path = fixture("tiny/model_config.json");
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    let config = LovaConfig::from_json_str(&config_text).unwrap();
    let engine_path = dir.path().join("engine.safetensors");
    let clip = fixture("clip/openai.safetensors");
    engine::convert(
        &fixture("tiny/checkpoint.safetensors"),
        Some(&clip),
        &config,
        &config_text,
        &engine_path,
        &mut |_, _| {},
    )
    .unwrap();
    let (engine_header, engine_data) = split(&std::fs::read(&engine_path).unwrap());
    let (features_header, features_data) = split(&std::fs::read(fixture("tiny/features.safetensors")).unwrap());
    let latents_path = dir.path().join("latents.safetensors");
    let latents: Vec<f32> = (0..64 * 3).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let meta = std::collections::HashMap::from([("seconds".to_string(), "0.1".to_string())]);
    write_tensors_atomically(&latents_path, &[("latents", &HostTensor::new(vec![64, 3], latents))], Some(meta))
        .unwrap();
    let (latents_header, latents_data) = split(&std::fs::read(&latents_path).unwrap());
    let vae = engine::load_vae(&CpuBackend, &WeightSource::Engine(&engine_path)).unwrap();
    Seeds {
        engine_header,
        engine_data,
        config: config_text,
        features_header,
        features_data,
        latents_header,
        latents_data,
        vae,
        sample_rate: config.sample_rate,
        _dir: dir,
    }
}

/// `info` and `infer --weights` on an engine file: header, config, every
/// network loaded (CLIP too), the VAE's memory plan, a short decode.
fn engine_case(path: &Path, _out: &Path) -> lova_fast::Result<()> {
    let backend = CpuBackend;
    let file = SafetensorsFile::open(path)?;
    for key in file.keys() {
        let _ = (file.shape(&key), file.dtype_name(&key));
    }
    let (file, config) = engine::open_engine_file(path)?;
    let _ = vae::weight_bytes_fp16(&config.vae_decoder);
    for seconds in [10.0, 139.0] {
        vae::planned_arena_bytes(&config.vae_decoder, &[config.latent_len_for_seconds(seconds)])?;
    }
    Dit::load(&backend, &file, &config.dit, DIT_KEYS)?;
    let vae = engine::load_vae(&backend, &WeightSource::Engine(path))?;
    engine::load_clip(&backend, &file)?;
    let z = HostTensor::new(vec![config.vae_decoder.latent_dim, 2], vec![0.25; 2 * config.vae_decoder.latent_dim]);
    let audio = vae.decode(&backend, &[z])?.remove(0);
    finish(&audio, audio.shape[1], "the VAE decode")?;
    Ok(())
}

/// `convert --config` and `info` on a model config.
fn config_case(path: &Path, out: &Path) -> lova_fast::Result<()> {
    let config = LovaConfig::from_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| lova_fast::Error::io(path, e))?;
    let _ = dit::tensor_list(&config.dit);
    vae::check_config(&config.vae_decoder)?;
    let _ = vae::tensor_specs(&config.vae_decoder);
    let latent_len = config.latent_len_for_seconds(10.0);
    vae::chunk_for_budget(&config.vae_decoder, latent_len, 3 << 29)?;
    config.check_lengths(latent_len, 80)?;
    let engine = out.join("engine.safetensors");
    engine::convert(&fixture("tiny/checkpoint.safetensors"), None, &config, &text, &engine, &mut |_, _| {})?;
    std::fs::remove_file(&engine).map_err(|e| lova_fast::Error::io(&engine, e))?;
    Ok(())
}

/// `infer FEATURES.safetensors`: the features read and measured.
fn features_case(path: &Path, _out: &Path) -> lova_fast::Result<()> {
    let config = LovaConfig::from_file(&fixture("tiny/model_config.json"))?;
    let features = read_features(path, config.dit.cond_token_dim)?;
    let frames = features.shape[0];
    let seconds = config.seconds_for_frames(frames);
    config.check_seconds("the features' length", seconds)?;
    config.check_lengths(config.latent_len_for_seconds(seconds), frames)
}

/// `decode LATENTS.safetensors -o OUT.wav`.
fn latents_case(vae: &VaeDecoder<CpuBackend>, sample_rate: u32, path: &Path, out: &Path) -> lova_fast::Result<()> {
    let latents = read_latents(path, 64)?;
    let full = latents.shape[1] as f64 * 2048.0 / sample_rate as f64;
    let seconds = match SafetensorsFile::open(path)?.user_metadata("seconds").and_then(|s| s.parse::<f64>().ok()) {
        Some(s) => {
            LovaConfig::from_file(&fixture("tiny/model_config.json"))?.check_seconds("stored seconds", s)?;
            s.min(full)
        }
        None => full,
    };
    let audio = vae.decode(&CpuBackend, &[latents])?.remove(0);
    let audio = finish(&audio, samples_for_seconds(seconds, sample_rate), "the VAE decode")?;
    let wav = out.join("out.wav");
    write_wav(&wav, &audio, sample_rate, SampleFormat::Pcm16)?;
    std::fs::remove_file(&wav).map_err(|e| lova_fast::Error::io(&wav, e))?;
    Ok(())
}

/// Runs `case` on `input`, counting how it ended and what it left in `out`.
fn run_case(case: &Case, input: &Path, out: &Path, crashes: &Arc<Mutex<Vec<String>>>, label: &str) -> Counts {
    let mut c = Counts::default();
    match catch_unwind(AssertUnwindSafe(|| case(input, out))) {
        Ok(Ok(())) => c.successes += 1,
        Ok(Err(_)) => c.errors += 1,
        Err(_) => {
            c.crashes += 1;
            let kept = dir_of_crashes().join(format!("{label}-{}", crashes.lock().unwrap().len()));
            let _ = std::fs::copy(input, &kept);
            crashes.lock().unwrap().push(kept.display().to_string());
        }
    }
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        c.left_behind += 1;
        let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
    }
    c
}

/// Where the inputs of crashing cases are kept, to reproduce them.
fn dir_of_crashes() -> PathBuf {
    let dir = std::env::temp_dir().join("lova-fast-fuzz-crashes");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mutated_inputs_end_in_clean_errors_or_successes() {
    let seed = std::env::var("LOVA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let budget = std::env::var("LOVA_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let s = seeds();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Panic messages of crashing cases are kept (and printed below), not interleaved with the counts.
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook_messages = Arc::clone(&messages);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| hook_messages.lock().unwrap().push(info.to_string())));

    let latents = |p: &Path, o: &Path| latents_case(&s.vae, s.sample_rate, p, o);
    let targets: [(&str, &Case, &Mutator); 4] = [
        ("engine", &engine_case, &|rng| mutate_safetensors(rng, &s.engine_header, &s.engine_data)),
        ("config", &config_case, &|rng| {
            if rng.chance(75) { mutate_json(rng, &s.config) } else { mutate_bytes_text(rng, &s.config) }.into_bytes()
        }),
        ("features", &features_case, &|rng| mutate_safetensors(rng, &s.features_header, &s.features_data)),
        ("latents", &latents, &|rng| mutate_safetensors(rng, &s.latents_header, &s.latents_data)),
    ];
    let crashes: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut per_target: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut round = 0usize;
    loop {
        let done = match budget {
            Some(b) => started.elapsed() >= b,
            None => round >= TEST_CASES_PER_TARGET,
        };
        if done {
            break;
        }
        for (name, case, mutate) in &targets {
            let input = dir.path().join(format!("{name}.input"));
            std::fs::write(&input, mutate(&mut rng)).unwrap();
            *per_target.entry(name).or_default() += run_case(*case, &input, &out, &crashes, name);
        }
        round += 1;
        if budget.is_some() && round.is_multiple_of(500) {
            let total = per_target.values().fold(Counts::default(), |mut a, c| {
                a += *c;
                a
            });
            eprintln!("fuzz progress: {:.0} s, {round} rounds, {total:?}", started.elapsed().as_secs_f64());
        }
    }
    std::panic::set_hook(default_hook);

    let mut total = Counts::default();
    for (name, c) in &per_target {
        eprintln!(
            "fuzz {name}: {} cases: {} clean errors, {} successes, {} crashes, {} outputs left behind",
            c.errors + c.successes + c.crashes,
            c.errors,
            c.successes,
            c.crashes,
            c.left_behind
        );
        total += *c;
    }
    eprintln!(
        "fuzz total (seed {seed}, {:.1} s): {} cases: {} clean errors, {} successes, {} crashes, {} outputs left behind",
        started.elapsed().as_secs_f64(),
        total.errors + total.successes + total.crashes,
        total.errors,
        total.successes,
        total.crashes,
        total.left_behind
    );
    let messages = messages.lock().unwrap();
    for (m, input) in messages.iter().zip(crashes.lock().unwrap().iter()).take(10) {
        eprintln!("crash (input kept at {input}): {m}");
    }
    assert_eq!(total.crashes, 0, "crashes: {:?}", &messages[..messages.len().min(10)]);
    assert_eq!(total.left_behind, 0, "outputs left behind");
    // The mutations must reach past the parsers: some cases of every target succeed
    // and some fail, or the fuzzer is not exercising the loaders.
    for (name, c) in &per_target {
        assert!(c.successes > 0 && c.errors > 0, "{name}: {c:?}");
    }
}
