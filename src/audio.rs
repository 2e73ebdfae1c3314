//! Latents-to-WAV finishing (lova-model.md section 7): trim to the clip's exact
//! length, peak-normalise, and write 16-bit PCM (or 32-bit float) WAV with
//! hound, through a temporary file so that a failure leaves nothing behind.

use std::path::Path;

use crate::error::{Error, Result};
use crate::partial_file::partial_path_for;
use crate::tensor::HostTensor;

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
pub fn write_wav(path: &Path, audio: &HostTensor, sample_rate: u32, format: SampleFormat) -> Result<()> {
    let (channels, len) = (audio.shape[0], audio.shape[1]);
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
