//! Data-parallel ranks on CUDA devices: the [`Collective`] of the kernel backend over NCCL
//! ([`super::nccl`]), queued on each device's stream like its kernels, and the way the ranks meet
//! ([`connect`]): the devices of one process together (`ncclCommInitAll`), or one rank per process
//! through a rendezvous directory where rank 0 leaves NCCL's unique id (`docs/usage.md`, "Several
//! devices").

use super::exec::{CudaBackend, CudaExec};
use super::nccl::{self, Comm, DataType, ReduceOp, UniqueId};
use crate::backend::kernel::Mem;
use crate::backend::Collective;
use crate::config::Parallel;
use crate::error::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// One rank's NCCL communicator, for the backend on its device. Dropped before [`Collective::finish`]
/// (its rank failed), it aborts the communicator (`ncclCommAbort`) rather than waiting to destroy it. The
/// stand-in then fails the peers' collectives; NCCL does not promise that, so the trainer also makes the
/// ranks agree after the work only rank 0 does (`Trainer::settle`), where a failure of one rank alone is
/// likeliest.
pub struct NcclRank {
    comm: Option<Comm>,
    finished: bool,
}

impl NcclRank {
    fn new(comm: Comm) -> Self {
        NcclRank {
            comm: Some(comm),
            finished: false,
        }
    }

    fn comm(&self) -> &Comm {
        self.comm
            .as_ref()
            .expect("the communicator lives until drop")
    }
}

impl Drop for NcclRank {
    fn drop(&mut self) {
        if let Some(comm) = self.comm.take() {
            if !self.finished {
                let _ = comm.abort();
            }
        }
    }
}

impl NcclRank {
    /// Queues `f` with this rank's device current on the calling thread (NCCL's calls take the device
    /// from their communicator, the stream's context must be current for cudarc's own calls).
    fn on<R>(&self, be: &CudaBackend, f: impl FnOnce(&CudaExec) -> Result<R>) -> Result<R> {
        let exec = be.exec();
        exec.bind()?;
        f(exec)
    }
}

impl Collective<CudaBackend> for NcclRank {
    fn rank(&self) -> usize {
        self.comm().rank()
    }
    fn world(&self) -> usize {
        self.comm().world()
    }
    fn all_reduce_sum(&self, be: &CudaBackend, x: &mut Mem<CudaExec, f32>) -> Result<()> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        self.on(be, |e| {
            let p = x.dev_mut().addr();
            // SAFETY: `x` is a live buffer of this rank's device of n f32, borrowed mutably for the call;
            // the reduction is queued on the backend's one stream, ordered after the kernels that wrote
            // `x` and before any that read it (every op of the backend runs on that stream).
            unsafe {
                self.comm()
                    .all_reduce(p, p, n, DataType::F32, ReduceOp::Sum, e.raw_stream())
            }
        })
    }
    fn reduce_scatter_sum(
        &self,
        be: &CudaBackend,
        x: &mut Mem<CudaExec, f32>,
        part: usize,
    ) -> Result<()> {
        let world = self.world();
        assert!(
            x.len() >= world * part,
            "reduce_scatter_sum: {} elements, fewer than W × {part}",
            x.len()
        );
        if part == 0 {
            return Ok(());
        }
        let rank = self.rank();
        self.on(be, |e| {
            let base = x.dev_mut().addr();
            let recv = base + 4 * (rank * part) as u64;
            // SAFETY: `x` is a live buffer of this rank's device holding at least W·part f32, borrowed
            // mutably; NCCL's in-place form (recv = send + rank·part); queued on the backend's stream
            // as all_reduce_sum says.
            unsafe {
                self.comm().reduce_scatter(
                    base,
                    recv,
                    part,
                    DataType::F32,
                    ReduceOp::Sum,
                    e.raw_stream(),
                )
            }
        })
    }
    fn broadcast(
        &self,
        be: &CudaBackend,
        x: &mut Mem<CudaExec, f32>,
        range: std::ops::Range<usize>,
        root: usize,
    ) -> Result<()> {
        assert!(
            range.end <= x.len(),
            "broadcast: {range:?} of {} elements",
            x.len()
        );
        if range.is_empty() {
            return Ok(());
        }
        self.on(be, |e| {
            let p = x.dev_mut().addr() + 4 * range.start as u64;
            // SAFETY: [p, p + 4·len) lies inside `x`, a live buffer of this rank's device borrowed
            // mutably; in place (send = recv), queued on the backend's stream as all_reduce_sum says.
            unsafe {
                self.comm()
                    .broadcast(p, p, range.len(), DataType::F32, root, e.raw_stream())
            }
        })
    }
    fn all_gather_host(&self, be: &CudaBackend, x: &[f64]) -> Result<Vec<f64>> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        self.on(be, |e| {
            let send = Mem::<CudaExec, f64>::from_host(e, x)?;
            let mut recv = Mem::<CudaExec, f64>::zeros(e, x.len() * self.world())?;
            let (src, dst) = (send.dev().addr(), recv.dev_mut().addr());
            // SAFETY: both buffers are live on this rank's device for the call and the download below,
            // which synchronizes the stream before they are freed; `recv` holds W·len(x) f64.
            unsafe {
                self.comm()
                    .all_gather(src, dst, x.len(), DataType::F64, e.raw_stream())?
            };
            recv.download(e)
        })
    }
    fn finish(&mut self) {
        self.finished = true;
    }
    fn enter(&self, be: &CudaBackend) -> Result<()> {
        be.exec().bind()
    }
}

/// How long a rank other than 0 waits for rank 0's id in the rendezvous directory.
pub const RENDEZVOUS_WAIT: Duration = Duration::from_secs(600);

/// The file in the rendezvous directory holding NCCL's unique id, as hex.
pub const ID_FILE: &str = "rotadam-nccl-id";

/// The ranks of `backends` (this process's devices, in the order of `parallel.devices`) joined into
/// one NCCL communicator: all of them by `ncclCommInitAll` when this process holds every rank, else this
/// process's one rank through `parallel`'s rendezvous directory.
pub fn connect(backends: &[CudaBackend], parallel: &Parallel) -> Result<Vec<NcclRank>> {
    if !nccl::available() {
        return Err(Error::Device(format!(
            "data parallelism over {} ranks needs NCCL ({}), which could not be loaded: {}",
            parallel.world(),
            nccl::LIBRARY,
            nccl::version()
                .err()
                .map_or(String::new(), |e| e.to_string())
        )));
    }
    let Some(p) = &parallel.processes else {
        // ncclCommInitAll: one communicator per device, made together (a communicator made inside a
        // group cannot be queried before the group ends)
        let ordinals: Vec<usize> = backends.iter().map(|be| be.exec().ordinal()).collect();
        let comms = Comm::init_all(&ordinals)?;
        return Ok(comms.into_iter().map(NcclRank::new).collect());
    };
    let [be] = backends else {
        return Err(Error::config(
            "devices",
            "a process of a multi-process run drives one device",
        ));
    };
    let id = rendezvous(&p.rendezvous, p.rank, p.world_size)?;
    let joined = (|| -> Result<NcclRank> {
        be.exec().bind()?;
        let rank = NcclRank::new(Comm::init_rank(p.world_size, &id, p.rank)?);
        // once every rank has answered, every rank has read the id
        rank.all_gather_host(be, &[p.rank as f64])?;
        Ok(rank)
    })();
    // rank 0 removes the id, whether the ranks joined or not (a later launch must not find it)
    if p.rank == 0 {
        let file = p.rendezvous.join(ID_FILE);
        if let Err(e) = std::fs::remove_file(&file) {
            if joined.is_ok() {
                return Err(Error::io(&file, e));
            }
        }
    }
    let rank = joined?;
    Ok(vec![rank])
}

/// NCCL's id for this launch: rank 0 makes it and writes it into `dir` (atomically); the others wait for
/// it. A leftover id file from another launch is refused by rank 0 (ranks would join the wrong one).
fn rendezvous(dir: &Path, rank: usize, world: usize) -> Result<UniqueId> {
    let path = dir.join(ID_FILE);
    if rank == 0 {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if path.exists() {
            return Err(Error::bad_file(
                &path,
                "rendezvous",
                "an NCCL id from another launch is still there: remove it, or give every launch a \
                 fresh --rendezvous directory",
            ));
        }
        let id = UniqueId::new()?;
        let text = format!("{world} {}\n", id.to_hex());
        // written aside, then linked into place: the link fails if another launch's id appeared
        // meanwhile, and a reader never sees a partial file
        let tmp = dir.join(format!(".{ID_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|e| {
            Error::bad_file(
                &path,
                "rendezvous",
                format!(
                    "cannot create the NCCL id ({e}): another launch's id may be there; give every \
                     launch a fresh --rendezvous directory"
                ),
            )
        })?;
        return Ok(id);
    }
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut parts = text.split_whitespace();
            let (w, hex) = (parts.next(), parts.next());
            let w: Option<usize> = w.and_then(|w| w.parse().ok());
            return match (w, hex) {
                (Some(w), Some(hex)) if w == world => UniqueId::from_hex(hex),
                (Some(w), Some(_)) => Err(Error::bad_file(
                    &path,
                    "world size",
                    format!("rank 0 launched {w} ranks, this process was told {world}"),
                )),
                _ => Err(Error::bad_file(
                    &path,
                    "rendezvous",
                    "expected `<world size> <NCCL id as hex>`",
                )),
            };
        }
        if start.elapsed() > RENDEZVOUS_WAIT {
            return Err(Error::bad_file(
                &path,
                "rendezvous",
                format!(
                    "rank {rank} waited {} s for rank 0 to write the NCCL id here",
                    RENDEZVOUS_WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
