//! Measurement through criterion. Criterion runs the samples and computes the statistics
//! (bootstrap confidence intervals, outlier classification); this module only configures it
//! programmatically and reads the estimates back from criterion's `estimates.json`.
//!
//! - [`bench_custom`]: criterion's wall-time measurement with `iter_custom` (the routine
//!   reports the time of `iters` iterations itself; used for injected test kernels).
//! - [`CudaEvents`]: a [`criterion::measurement::Measurement`] backed by CUDA events recorded
//!   on the kernel's stream (`cuEventRecord` before and after the batch of launches,
//!   `cuEventElapsedTime`); [`bench_cuda`] times a launch closure with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attnforge_runtime::Gpu;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use cudarc::driver::{sys::CUevent_flags, CudaContext, CudaEvent, CudaStream};
use serde::{Deserialize, Serialize};

/// How long criterion samples one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Warm-up time, milliseconds.
    pub warm_up_ms: u64,
    /// Measurement time, milliseconds.
    pub measurement_ms: u64,
    /// Samples (criterion's minimum is 10).
    pub samples: usize,
    /// Bootstrap resamples.
    pub resamples: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            warm_up_ms: 200,
            measurement_ms: 1000,
            samples: 20,
            resamples: 10_000,
        }
    }
}

impl BenchConfig {
    /// A short configuration for tests and injected kernels.
    pub fn quick() -> Self {
        BenchConfig {
            warm_up_ms: 5,
            measurement_ms: 20,
            samples: 10,
            resamples: 1000,
        }
    }
}

/// Criterion's estimates of one benchmark, in nanoseconds per iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Mean.
    pub mean_ns: f64,
    /// Lower bound of the mean's 95% confidence interval.
    pub mean_lo_ns: f64,
    /// Upper bound of the mean's 95% confidence interval.
    pub mean_hi_ns: f64,
    /// Median.
    pub median_ns: f64,
    /// Standard deviation.
    pub std_dev_ns: f64,
    /// What produced the values (`criterion/cuda-events`, `criterion/wall-time`).
    pub source: String,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Criterion ran but its estimates file is missing or unreadable.
    #[error("criterion estimates `{path}`: {reason}")]
    Estimates {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A CUDA call failed while timing.
    #[error("cuda event timing: {0}")]
    Cuda(String),
    /// The benchmark id contains characters criterion would rewrite.
    #[error("benchmark id `{0}` must be lower-case ASCII letters, digits and `_`")]
    BadId(String),
}

fn criterion_with<M: Measurement>(cfg: &BenchConfig, dir: &Path, m: M) -> Criterion<M> {
    Criterion::default()
        .output_directory(dir)
        .warm_up_time(Duration::from_millis(cfg.warm_up_ms.max(1)))
        .measurement_time(Duration::from_millis(cfg.measurement_ms.max(1)))
        .sample_size(cfg.samples.max(10))
        .nresamples(cfg.resamples.max(100))
        .without_plots()
        .with_output_color(false)
        .with_measurement(m)
}

fn check_id(id: &str) -> Result<(), MeasureError> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(MeasureError::BadId(id.to_owned()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct CiJson {
    lower_bound: f64,
    upper_bound: f64,
}
#[derive(Deserialize)]
struct EstJson {
    point_estimate: f64,
    confidence_interval: CiJson,
}
#[derive(Deserialize)]
struct EstimatesJson {
    mean: EstJson,
    median: EstJson,
    std_dev: EstJson,
}

/// Reads criterion's `<dir>/<id>/new/estimates.json`; `scale` converts criterion's unit to ns.
pub fn read_estimates(
    dir: &Path,
    id: &str,
    scale: f64,
    source: &str,
) -> Result<Estimate, MeasureError> {
    let path = dir.join(id).join("new").join("estimates.json");
    let err = |reason: String| MeasureError::Estimates {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let e: EstimatesJson = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(Estimate {
        mean_ns: e.mean.point_estimate * scale,
        mean_lo_ns: e.mean.confidence_interval.lower_bound * scale,
        mean_hi_ns: e.mean.confidence_interval.upper_bound * scale,
        median_ns: e.median.point_estimate * scale,
        std_dev_ns: e.std_dev.point_estimate * scale,
        source: source.to_owned(),
    })
}

/// Runs criterion (wall-time measurement) on a routine that returns the time of `iters`
/// iterations, and returns criterion's estimates. Results go under `dir`.
pub fn bench_custom(
    cfg: &BenchConfig,
    dir: &Path,
    id: &str,
    mut routine: impl FnMut(u64) -> Duration,
) -> Result<Estimate, MeasureError> {
    check_id(id)?;
    let mut c = criterion_with(cfg, dir, criterion::measurement::WallTime);
    c.bench_function(id, |b| b.iter_custom(&mut routine));
    read_estimates(dir, id, 1.0, "criterion/wall-time")
}

/// Criterion measurement backed by CUDA events on a stream. Values are nanoseconds of
/// device time between the start and end events of a batch of iterations.
#[derive(Debug)]
pub struct CudaEvents {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    error: Arc<Mutex<Option<String>>>,
}

impl CudaEvents {
    /// Events on `gpu`'s context and stream.
    pub fn new(gpu: &Gpu) -> Self {
        CudaEvents {
            ctx: gpu.context().clone(),
            stream: gpu.stream().clone(),
            error: Arc::new(Mutex::new(None)),
        }
    }

    fn fail(&self, e: impl std::fmt::Display) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(|| e.to_string());
    }

    /// The first CUDA error seen while timing, if any (criterion's trait cannot return one).
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn event(&self) -> Option<CudaEvent> {
        match self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)) {
            Ok(e) => match e.record(&self.stream) {
                Ok(()) => Some(e),
                Err(err) => {
                    self.fail(err);
                    None
                }
            },
            Err(err) => {
                self.fail(err);
                None
            }
        }
    }
}

/// Smallest value reported when timing failed (criterion rejects zero-time samples); the
/// failure itself is reported through [`CudaEvents::take_error`].
const FAILED_NS: f64 = 1.0;

impl Measurement for CudaEvents {
    type Intermediate = Option<CudaEvent>;
    type Value = f64;

    fn start(&self) -> Self::Intermediate {
        self.event()
    }

    fn end(&self, start: Self::Intermediate) -> Self::Value {
        let end = self.event();
        match (start, end) {
            (Some(s), Some(e)) => match s.elapsed_ms(&e) {
                Ok(ms) => (ms as f64 * 1e6).max(FAILED_NS),
                Err(err) => {
                    self.fail(err);
                    FAILED_NS
                }
            },
            _ => FAILED_NS,
        }
    }

    fn add(&self, v1: &f64, v2: &f64) -> f64 {
        v1 + v2
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanosecond values as ns / us / ms / s.
#[derive(Debug, Clone, Copy)]
pub struct NanosFormatter;

impl NanosFormatter {
    fn unit(typical: f64) -> (f64, &'static str) {
        if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "us")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        }
    }
}

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical_value: f64, values: &mut [f64]) -> &'static str {
        let (f, u) = Self::unit(typical_value);
        values.iter_mut().for_each(|v| *v *= f);
        u
    }

    fn scale_throughputs(
        &self,
        typical_value: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per = match throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                *n as f64
            }
        };
        let _ = typical_value;
        values
            .iter_mut()
            .for_each(|v| *v = per * 1e9 / v.max(1e-12));
        match throughput {
            Throughput::Elements(_) => "elem/s",
            _ => "B/s",
        }
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// Times `launch` (which enqueues one kernel launch on `gpu`'s stream) with criterion and
/// [`CudaEvents`]; returns criterion's estimates in nanoseconds of device time.
pub fn bench_cuda(
    cfg: &BenchConfig,
    dir: &Path,
    id: &str,
    gpu: &Gpu,
    mut launch: impl FnMut() -> Result<(), String>,
) -> Result<Estimate, MeasureError> {
    check_id(id)?;
    let launch_error: Mutex<Option<String>> = Mutex::new(None);
    let events = CudaEvents::new(gpu);
    let timing_error = events.error.clone();
    let mut c = criterion_with(cfg, dir, events);
    c.bench_function(id, |b| {
        b.iter(|| {
            if let Err(e) = launch() {
                launch_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        })
    });
    if let Some(e) = launch_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(MeasureError::Cuda(e));
    }
    if let Some(e) = timing_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(MeasureError::Cuda(e));
    }
    read_estimates(dir, id, 1.0, "criterion/cuda-events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_estimates_follow_the_routine() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BenchConfig::quick();
        // The routine's wall time grows with `iters` (criterion's warm-up sizes the batches
        // by wall time); the reported value is exact.
        let timed = |ns: u64| {
            move |n: u64| {
                let d = Duration::from_nanos(ns.saturating_mul(n));
                std::thread::sleep(d);
                d
            }
        };
        let fast = bench_custom(&cfg, dir.path(), "fast", timed(100)).unwrap();
        let slow = bench_custom(&cfg, dir.path(), "slow", timed(5000)).unwrap();
        assert!((fast.mean_ns - 100.0).abs() < 1.0, "{fast:?}");
        assert!((slow.mean_ns - 5000.0).abs() < 10.0, "{slow:?}");
        assert!(slow.mean_lo_ns <= slow.mean_ns && slow.mean_ns <= slow.mean_hi_ns);
        assert_eq!(fast.source, "criterion/wall-time");
    }

    #[test]
    fn bad_ids_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            bench_custom(&BenchConfig::quick(), dir.path(), "Bad/Id", |n| {
                Duration::from_nanos(n)
            }),
            Err(MeasureError::BadId(_))
        ));
        assert!(matches!(
            read_estimates(dir.path(), "nothing", 1.0, "x"),
            Err(MeasureError::Estimates { .. })
        ));
    }

    #[test]
    fn nanos_formatter_scales() {
        let mut v = [1500.0, 2500.0];
        assert_eq!(NanosFormatter.scale_values(2000.0, &mut v), "us");
        assert_eq!(v, [1.5, 2.5]);
        let mut v = [3.0e6];
        assert_eq!(NanosFormatter.scale_values(3.0e6, &mut v), "ms");
        assert_eq!(v, [3.0]);
    }
}
