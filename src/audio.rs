//! Latents-to-WAV finishing (lova-model.md section 7): trim to the clip's exact
//! length, peak-normalise, and write 16-bit PCM (or 32-bit float) WAV with
//! hound, through a temporary file so that a failure leaves nothing behind.

use std::path::Path;

use crate::error::{Error, Result, ensure_finite};
use crate::partial_file::partial_path_for;
use crate::tensor::HostTensor;

/// Sample encoding of a written WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// 16-bit signed PCM (the reference's output).
    Pcm16,
    /// 32-bit IEEE float.
    Float32,
}

/// Samples for `seconds` of audio: `round(seconds * sample_rate)`.
pub fn samples_for_seconds(seconds: f64, sample_rate: u32) -> usize {
    (seconds * sample_rate as f64).round() as usize
}

/// The decoded audio `[C, S]` made ready to write: `trim_and_normalise`d to
/// `samples`, refused when it holds no sample (a length below one sample), a
/// non-finite value (overflow in `stage`), or only zeros (a silence that is
/// overflow or underflow, not sound: normalising it would write a silent
/// file). `stage` names where the audio came from in the message ("the VAE
/// decode"). Use it between the decoder and `write_wav`.
pub fn finish(audio: &HostTensor, samples: usize, stage: &str) -> Result<HostTensor> {
    if audio.shape.len() != 2 || audio.shape[0] == 0 {
        return Err(Error::InvalidInput(format!(
            "{stage} gave audio of shape {:?}, not [channels, samples]",
            audio.shape
        )));
    }
    if samples == 0 || audio.shape[1] == 0 {
        return Err(Error::InvalidInput(format!(
            "{stage} gave {} samples and {samples} were asked for: no audio to write",
            audio.shape[1]
        )));
    }
    ensure_finite(&format!("the audio from {stage}"), &audio.data)?;
    let out = trim_and_normalise(audio, samples);
    if out.data.iter().all(|&v| v == 0.0) {
        return Err(Error::InvalidInput(format!(
            "the audio from {stage} is silent (every sample is 0): refusing to write a silent file"
        )));
    }
    Ok(out)
}

/// Keeps the first `samples` of each channel of `audio` `[C, S]` and scales it so
/// that the largest magnitude is 1 (`audio / max|audio|`, as the reference does).
pub fn trim_and_normalise(audio: &HostTensor, samples: usize) -> HostTensor {
    let (channels, len) = (audio.shape[0], audio.shape[1]);
    let keep = samples.min(len);
    let mut data: Vec<f32> = (0..channels).flat_map(|c| audio.data[c * len..c * len + keep].iter().copied()).collect();
    let peak = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        data.iter_mut().for_each(|v| *v /= peak);
    }
    HostTensor::new(vec![channels, keep], data)
}

/// Writes `audio` `[C, S]` (values in [-1, 1]) as an interleaved WAV file.
/// Audio with no sample or a non-finite one is refused before any file is
/// created: a NaN would become a 0 in 16-bit PCM and a NaN in float WAV.
pub fn write_wav(path: &Path, audio: &HostTensor, sample_rate: u32, format: SampleFormat) -> Result<()> {
    let refuse = |why: String| Error::InvalidInput(format!("not writing {}: {why}", path.display()));
    let (channels, len) = match audio.shape[..] {
        [c, s] if c > 0 && s > 0 && c <= u16::MAX as usize => (c, s),
        _ => return Err(refuse(format!("audio of shape {:?} holds no sample to write", audio.shape))),
    };
    ensure_finite("the audio to write", &audio.data).map_err(|e| refuse(e.to_string()))?;
    let spec = hound::WavSpec {
        channels: channels as u16,
        sample_rate,
        bits_per_sample: if format == SampleFormat::Pcm16 { 16 } else { 32 },
        sample_format: if format == SampleFormat::Pcm16 {
            hound::SampleFormat::Int
        } else {
            hound::SampleFormat::Float
        },
    };
    let tmp = partial_path_for(path)?;
    let write = || -> std::result::Result<(), hound::Error> {
        let mut w = hound::WavWriter::create(&tmp, spec)?;
        for t in 0..len {
            for c in 0..channels {
                let v = audio.data[c * len + t].clamp(-1.0, 1.0);
                match format {
                    SampleFormat::Pcm16 => w.write_sample((v * 32767.0) as i16)?,
                    SampleFormat::Float32 => w.write_sample(v)?,
                }
            }
        }
        w.finalize()
    };
    let result = write().map_err(|e| match e {
        hound::Error::IoError(io) => Error::write(path, io),
        other => Error::InvalidInput(format!("cannot write {}: {other}", path.display())),
    });
    let result = result.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::write(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_to_the_exact_length_and_peak_normalises() {
        let audio = HostTensor::new(vec![2, 5], vec![0.1, -0.4, 0.2, 9.0, 9.0, 0.0, 0.2, -0.1, 9.0, 9.0]);
        let out = trim_and_normalise(&audio, 3);
        assert_eq!(out.shape, vec![2, 3]);
        assert_eq!(out.data, vec![0.25, -1.0, 0.5, 0.0, 0.5, -0.25]);
        assert_eq!(samples_for_seconds(2.5, 44100), 110250);
    }

    #[test]
    fn audio_that_is_not_sound_is_an_error_naming_the_stage() {
        let good = HostTensor::new(vec![2, 3], vec![0.5, -1.0, 0.25, 0.0, 2.0, 1.0]);
        assert_eq!(finish(&good, 3, "the VAE decode").unwrap().data, vec![0.25, -0.5, 0.125, 0.0, 1.0, 0.5]);
        let cases = [
            (HostTensor::new(vec![2, 3], vec![f32::NAN; 6]), 3, "non-finite"),
            (HostTensor::new(vec![1, 2], vec![1.0, f32::INFINITY]), 2, "non-finite"),
            (HostTensor::new(vec![2, 3], vec![0.0; 6]), 3, "silent"),
            (good.clone(), 0, "no audio"),
            (HostTensor::new(vec![2, 0], vec![]), 3, "no audio"),
        ];
        for (audio, samples, needle) in cases {
            let e = finish(&audio, samples, "the VAE decode").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("the VAE decode"), "{e}");
        }
    }

    #[test]
    fn wav_writing_refuses_empty_or_non_finite_audio_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        for audio in [HostTensor::new(vec![2, 0], vec![]), HostTensor::new(vec![1, 2], vec![0.5, f32::NAN])] {
            for format in [SampleFormat::Pcm16, SampleFormat::Float32] {
                let e = write_wav(&path, &audio, 44100, format).unwrap_err().to_string();
                assert!(e.contains("out.wav"), "{e}");
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_write_says_write_and_names_the_path_and_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        // A folder where the temporary file goes makes its creation fail, also as root.
        std::fs::create_dir(partial_path_for(&path).unwrap()).unwrap();
        let audio = HostTensor::new(vec![1, 2], vec![0.5, -0.5]);
        let e = write_wav(&path, &audio, 44100, SampleFormat::Pcm16).unwrap_err();
        let text = format!("{:#}", anyhow::Error::new(e));
        assert!(text.starts_with("cannot write "), "{text}");
        assert_eq!(text.matches("out.wav").count(), 1, "{text}");
        assert_eq!(text.matches("os error").count(), 1, "{text}");
        assert!(!text.contains("partial"), "{text}");
    }

    #[test]
    fn wav_has_the_rate_channels_length_and_format_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let audio = HostTensor::new(vec![2, 4], vec![1.0, -1.0, 0.5, 0.0, 0.25, 0.0, -0.5, 1.0]);
        for (format, bits) in [(SampleFormat::Pcm16, 16), (SampleFormat::Float32, 32)] {
            let path = dir.path().join(format!("a{bits}.wav"));
            write_wav(&path, &audio, 44100, format).unwrap();
            let r = hound::WavReader::open(&path).unwrap();
            let s = r.spec();
            assert_eq!((s.channels, s.sample_rate, s.bits_per_sample), (2, 44100, bits));
            assert_eq!(r.duration(), 4);
            if format == SampleFormat::Pcm16 {
                let v: Vec<i16> = r.into_samples::<i16>().map(|x| x.unwrap()).collect();
                assert_eq!(v, vec![32767, 8191, -32767, 0, 16383, -16383, 0, 32767]);
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
