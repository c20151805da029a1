//! NCCL's collectives on the stand-in's `libnccl.so.2` (`kernels/standin/nccl.cpp`, `docs/cuda.md`)
//! through the crate's binding (`rotadam::backend::cuda::nccl`), each test in a child process with the
//! stand-in loaded and three devices (`super::standin::in_standin_with`):
//!
//! - ranks as threads (one device and one cudarc context each), W = 2 and 3: all-reduce in rank order bit
//!   for bit against the host (with values whose sum depends on the order), all-gather, reduce-scatter,
//!   broadcast and their in-place forms;
//! - one thread driving two devices' collectives inside a group;
//! - ranks as two processes (this test binary again), the unique id passed as hex;
//! - planted misuses the stand-in must report: mismatched collectives across ranks, bad arguments (a
//!   buffer on another device or too short, overlapping buffers, an invalid type or op, a stream of another
//!   device, `ncclGroupEnd` without a start, a destroyed communicator, one thread driving two ranks outside
//!   a group), bad initializations (nranks that disagree, a rank claimed twice, a rank that never joins, a
//!   malformed timeout), a peer that never calls (the timeout) and a peer process that exits.
//!
//! Every test but the planted ones also checks that the communicators' shared-memory segments are gone
//! from /dev/shm at the end.

use super::standin::in_standin_with;
use cudarc::driver::{
    CudaContext, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits,
};
use rotadam::backend::cuda::nccl::{self, Comm, DataType, ReduceOp, UniqueId};
use rotadam::backend::cuda::standin;
use rotadam::rng::Rng;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICES: (&str, &str) = ("ROTADAM_STANDIN_DEVICES", "3");
const TIMEOUT: &str = "ROTADAM_STANDIN_NCCL_TIMEOUT";
/// The functional tests' timeout: a rank that fails its assertions fails the test in seconds, not minutes.
const SHORT: (&str, &str) = (TIMEOUT, "20");

/// Runs `body` in a child with the stand-in, three devices and `env` (`in_standin_with`).
fn child(test: &str, planted: bool, env: &[(&str, &str)], body: impl FnOnce()) {
    let mut all = vec![DEVICES];
    all.extend_from_slice(env);
    in_standin_with(test, planted, &all, body);
}

/// Runs `f(rank, stream, comm)` on one thread per rank, rank r on device r with its context current and a
/// communicator of `world` ranks; returns the results in rank order.
fn ranks<T: Send>(world: usize, f: impl Fn(usize, &Arc<CudaStream>, &Comm) -> T + Sync) -> Vec<T> {
    let id = UniqueId::new().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (f, id) = (&f, &id);
                s.spawn(move || {
                    let ctx = CudaContext::new(rank).unwrap();
                    let stream = ctx.default_stream();
                    let comm = Comm::init_rank(world, id, rank).unwrap();
                    assert_eq!(
                        (comm.rank(), comm.world(), comm.device()),
                        (rank, world, rank)
                    );
                    f(rank, &stream, &comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `op(send, recv)` on device buffers holding `send` and `recv_len` zeros, queued on `stream`; then `recv`
/// read back (which synchronizes the stream, so the collective runs).
fn exchange<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    send: &[T],
    recv_len: usize,
    op: impl FnOnce(u64, u64) -> rotadam::Result<()>,
) -> rotadam::Result<Vec<T>> {
    let s = stream.clone_htod(send)?;
    let mut r = stream.alloc_zeros::<T>(recv_len)?;
    {
        let (sp, _gs) = s.device_ptr(stream);
        let (rp, _gr) = r.device_ptr_mut(stream);
        op(sp, rp)?;
    }
    Ok(stream.clone_dtoh(&r)?)
}

/// `op(base)` on one device buffer holding `init` (the in-place forms), then the buffer read back.
fn in_place<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    init: &[T],
    op: impl FnOnce(u64) -> rotadam::Result<()>,
) -> rotadam::Result<Vec<T>> {
    let mut b = stream.clone_htod(init)?;
    {
        let (p, _g) = b.device_ptr_mut(stream);
        op(p)?;
    }
    Ok(stream.clone_dtoh(&b)?)
}

/// `comm.all_reduce` of `send` on freshly uploaded buffers (`exchange`).
fn all_reduce<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    comm: &Comm,
    send: &[T],
    dt: DataType,
    op: ReduceOp,
) -> rotadam::Result<Vec<T>> {
    let n = send.len();
    exchange(stream, send, n, |s, r| {
        // SAFETY: `exchange` passes device buffers of `stream`'s device (the communicator's) holding n
        // elements each, alive until it reads `r` back, which synchronizes `stream`.
        unsafe { comm.all_reduce(s, r, n, dt, op, stream.cu_stream()) }
    })
}

/// `comm.all_gather` of `send` (`exchange`).
fn all_gather<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    comm: &Comm,
    send: &[T],
    dt: DataType,
) -> rotadam::Result<Vec<T>> {
    let n = send.len();
    exchange(stream, send, comm.world() * n, |s, r| {
        // SAFETY: as in `all_reduce`, with world × n elements received.
        unsafe { comm.all_gather(s, r, n, dt, stream.cu_stream()) }
    })
}

/// `comm.reduce_scatter` of `send` (world × recvcount elements; `exchange`).
fn reduce_scatter<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    comm: &Comm,
    send: &[T],
    dt: DataType,
    op: ReduceOp,
) -> rotadam::Result<Vec<T>> {
    let n = send.len() / comm.world();
    exchange(stream, send, n, |s, r| {
        // SAFETY: as in `all_reduce`, with world × n elements sent and n received.
        unsafe { comm.reduce_scatter(s, r, n, dt, op, stream.cu_stream()) }
    })
}

/// `comm.broadcast` of `send` from `root` (`exchange`).
fn broadcast<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    comm: &Comm,
    send: &[T],
    dt: DataType,
    root: usize,
) -> rotadam::Result<Vec<T>> {
    let n = send.len();
    exchange(stream, send, n, |s, r| {
        // SAFETY: as in `all_reduce`.
        unsafe { comm.broadcast(s, r, n, dt, root, stream.cu_stream()) }
    })
}

/// Values of every magnitude from 1e-8 to 1e8, both signs: their sums depend on the order of the additions.
fn spread(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| rng.normal() * 10f64.powi(rng.below(17) as i32 - 8))
        .collect()
}

/// The communicators' segments this process named (ncclGetUniqueId puts the pid in the name) still in
/// /dev/shm.
fn segments_left() -> Vec<String> {
    let prefix = format!("rotadam-nccl-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// All-reduce over W = 2 and 3 ranks (threads) reduces in rank order 0, 1, …, W−1 on every rank: f32 and
/// f64 sums equal a host fold in rank order bit for bit (with W = 3 and these values, the reverse order
/// differs, so a wrong order fails), int32 and uint8 sums wrap, max, min and avg, and the in-place form
/// (send == recv).
#[test]
fn all_reduce_sums_in_rank_order_bit_for_bit() {
    child(
        "cuda::nccl::all_reduce_sums_in_rank_order_bit_for_bit",
        false,
        &[SHORT],
        || {
            let n = 301;
            for world in [2usize, 3] {
                let mut rng = Rng::new(world as u64);
                let data: Vec<Vec<f64>> = (0..world).map(|_| spread(&mut rng, n)).collect();
                let f32s: Vec<Vec<f32>> = data
                    .iter()
                    .map(|v| v.iter().map(|&x| x as f32).collect())
                    .collect();
                let ints: Vec<Vec<i32>> = (0..world)
                    .map(|_| (0..n).map(|_| rng.next_u64() as i32).collect())
                    .collect();
                let bytes: Vec<Vec<u8>> = (0..world)
                    .map(|_| (0..n).map(|_| rng.next_u64() as u8).collect())
                    .collect();
                let fold32 = |order: &mut dyn Iterator<Item = usize>| -> Vec<f32> {
                    let first = order.next().unwrap();
                    let mut acc = f32s[first].clone();
                    for r in order {
                        acc.iter_mut().zip(&f32s[r]).for_each(|(a, x)| *a += x);
                    }
                    acc
                };
                let want32 = fold32(&mut (0..world));
                let want64: Vec<f64> = (0..n)
                    .map(|i| (1..world).fold(data[0][i], |a, r| a + data[r][i]))
                    .collect();
                if world == 3 {
                    let reverse = fold32(&mut (0..world).rev());
                    assert!(
                        want32
                            .iter()
                            .zip(&reverse)
                            .any(|(a, b)| a.to_bits() != b.to_bits()),
                        "the values do not make the order of the sum matter"
                    );
                }
                let got = ranks(world, |rank, stream, comm| {
                    let (f32_, f64_, i32_) = (DataType::F32, DataType::F64, DataType::I32);
                    let (sum, max, min, avg) =
                        (ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg);
                    let inplace = in_place(stream, &f32s[rank], |p| {
                        // SAFETY: `in_place` passes a device buffer of this rank's device holding n f32,
                        // alive until it reads it back (synchronizing the stream); send == recv.
                        unsafe { comm.all_reduce(p, p, n, f32_, sum, stream.cu_stream()) }
                    });
                    (
                        all_reduce(stream, comm, &f32s[rank], f32_, sum).unwrap(),
                        all_reduce(stream, comm, &data[rank], f64_, sum).unwrap(),
                        all_reduce(stream, comm, &ints[rank], i32_, sum).unwrap(),
                        all_reduce(stream, comm, &bytes[rank], DataType::U8, sum).unwrap(),
                        all_reduce(stream, comm, &f32s[rank], f32_, max).unwrap(),
                        all_reduce(stream, comm, &ints[rank], i32_, min).unwrap(),
                        all_reduce(stream, comm, &data[rank], f64_, avg).unwrap(),
                        inplace.unwrap(),
                    )
                });
                let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let col = |f: &dyn Fn(usize) -> i64| (0..n).map(f).collect::<Vec<i64>>();
                for (rank, (s32, s64, si, sb, mx, mn, avg, ip)) in got.iter().enumerate() {
                    let at = format!("W = {world}, rank {rank}");
                    assert_eq!(bits32(s32), bits32(&want32), "{at}: f32 sum");
                    assert_eq!(bits32(ip), bits32(&want32), "{at}: in-place f32 sum");
                    assert_eq!(bits64(s64), bits64(&want64), "{at}: f64 sum");
                    let wrap =
                        col(&|i| (0..world).fold(0i32, |a, r| a.wrapping_add(ints[r][i])) as i64);
                    assert_eq!(
                        si.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                        wrap,
                        "{at}: i32 sum"
                    );
                    let wrapb =
                        col(&|i| (0..world).fold(0u8, |a, r| a.wrapping_add(bytes[r][i])) as i64);
                    assert_eq!(
                        sb.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                        wrapb,
                        "{at}: u8 sum"
                    );
                    let want_max: Vec<f32> = (0..n)
                        .map(|i| (0..world).map(|r| f32s[r][i]).fold(f32::MIN, f32::max))
                        .collect();
                    assert_eq!(mx, &want_max, "{at}: max");
                    let want_min = col(&|i| (0..world).map(|r| ints[r][i]).min().unwrap() as i64);
                    assert_eq!(
                        mn.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                        want_min,
                        "{at}: min"
                    );
                    let want_avg: Vec<f64> = want64.iter().map(|s| s / world as f64).collect();
                    assert_eq!(bits64(avg), bits64(&want_avg), "{at}: avg");
                }
            }
            assert_eq!(segments_left(), Vec::<String>::new());
        },
    );
}

/// All-gather, reduce-scatter and broadcast over W = 2 and 3 ranks (threads), and their in-place forms
/// (all-gather: send = recv + rank·count; reduce-scatter: recv = send + rank·recvcount; broadcast: send ==
/// recv); all-gather and broadcast copy any type (bf16 here, which the stand-in does not reduce).
#[test]
fn all_gather_reduce_scatter_and_broadcast_with_their_in_place_forms() {
    child(
        "cuda::nccl::all_gather_reduce_scatter_and_broadcast_with_their_in_place_forms",
        false,
        &[SHORT],
        || {
            let c = 7; // elements per rank
            for world in [2usize, 3] {
                // rank r's element i: distinct everywhere, exact in f32 sums
                let val = |r: usize, i: usize| (r * 1000 + i) as f32 + 0.25;
                let got = ranks(world, |rank, stream, comm| {
                    let cu = stream.cu_stream();
                    let mine: Vec<f32> = (0..c).map(|i| val(rank, i)).collect();
                    let long: Vec<f32> = (0..world * c).map(|i| val(rank, i)).collect();
                    let halves: Vec<u16> = (0..c).map(|i| (rank * 100 + i) as u16).collect();
                    let mut init = vec![-1.0f32; world * c];
                    init[rank * c..(rank + 1) * c].copy_from_slice(&mine);
                    // this rank's block, in bytes
                    let at = (rank * c * 4) as u64;
                    // SAFETY (the three in-place calls): `in_place` passes a device buffer of this
                    // rank's device holding the elements given (world × c for the gather and the
                    // scatter, c for the broadcast), alive until it reads it back, which synchronizes
                    // the stream.
                    let gather_ip = in_place(stream, &init, |p| unsafe {
                        comm.all_gather(p + at, p, c, DataType::F32, cu)
                    });
                    // SAFETY: as above.
                    let scatter_ip = in_place(stream, &long, |p| unsafe {
                        comm.reduce_scatter(p, p + at, c, DataType::F32, ReduceOp::Sum, cu)
                    });
                    // SAFETY: as above.
                    let bcast_ip = in_place(stream, &mine, |p| unsafe {
                        comm.broadcast(p, p, c, DataType::F32, 0, cu)
                    });
                    (
                        all_gather(stream, comm, &mine, DataType::F32).unwrap(),
                        all_gather(stream, comm, &halves, DataType::Bf16).unwrap(),
                        gather_ip.unwrap(),
                        reduce_scatter(stream, comm, &long, DataType::F32, ReduceOp::Sum).unwrap(),
                        scatter_ip.unwrap(),
                        broadcast(stream, comm, &halves, DataType::Bf16, world - 1).unwrap(),
                        bcast_ip.unwrap(),
                    )
                });
                let gathered: Vec<f32> = (0..world)
                    .flat_map(|r| (0..c).map(move |i| val(r, i)))
                    .collect();
                let gathered16: Vec<u16> = (0..world)
                    .flat_map(|r| (0..c).map(move |i| (r * 100 + i) as u16))
                    .collect();
                for (rank, (g, g16, gip, sc, scip, bc, bcip)) in got.iter().enumerate() {
                    let at = format!("W = {world}, rank {rank}");
                    assert_eq!(g, &gathered, "{at}: all-gather");
                    assert_eq!(g16, &gathered16, "{at}: all-gather of bf16 bytes");
                    assert_eq!(gip, &gathered, "{at}: in-place all-gather");
                    let block: Vec<f32> = (0..c)
                        .map(|i| {
                            (1..world).fold(val(0, rank * c + i), |a, r| a + val(r, rank * c + i))
                        })
                        .collect();
                    assert_eq!(sc, &block, "{at}: reduce-scatter");
                    assert_eq!(
                        &scip[rank * c..(rank + 1) * c],
                        &block[..],
                        "{at}: in-place reduce-scatter"
                    );
                    let root_halves: Vec<u16> =
                        (0..c).map(|i| ((world - 1) * 100 + i) as u16).collect();
                    assert_eq!(bc, &root_halves, "{at}: broadcast from rank {}", world - 1);
                    let root0: Vec<f32> = (0..c).map(|i| val(0, i)).collect();
                    assert_eq!(bcip, &root0, "{at}: in-place broadcast from rank 0");
                }
            }
            assert_eq!(segments_left(), Vec::<String>::new());
        },
    );
}

/// One thread drives two devices (`Comm::init_all`, one created stream per device): the two all-reduces
/// issued inside a group complete when the streams are synchronized one after the other — device 0's
/// collective waits for device 1's, which the stand-in runs meanwhile (a schedule a GPU could choose).
#[test]
fn one_thread_drives_two_devices_inside_a_group() {
    child(
        "cuda::nccl::one_thread_drives_two_devices_inside_a_group",
        false,
        &[SHORT],
        || {
            let ctxs = [CudaContext::new(0).unwrap(), CudaContext::new(1).unwrap()];
            let streams = [ctxs[0].new_stream().unwrap(), ctxs[1].new_stream().unwrap()];
            let comms = Comm::init_all(&[0, 1]).unwrap();
            assert_eq!(
                comms
                    .iter()
                    .map(|c| (c.rank(), c.device()))
                    .collect::<Vec<_>>(),
                [(0, 0), (1, 1)]
            );
            let n = 64;
            let data: Vec<Vec<f32>> = (0..2)
                .map(|r| (0..n).map(|i| (r * n + i) as f32 * 0.5).collect())
                .collect();
            let sends: Vec<_> = (0..2)
                .map(|r| streams[r].clone_htod(&data[r]).unwrap())
                .collect();
            let mut recvs: Vec<_> = (0..2)
                .map(|r| streams[r].alloc_zeros::<f32>(n).unwrap())
                .collect();
            nccl::group(|| {
                for (r, recv) in recvs.iter_mut().enumerate() {
                    let (sp, _gs) = sends[r].device_ptr(&streams[r]);
                    let (rp, _gr) = recv.device_ptr_mut(&streams[r]);
                    // SAFETY: n-element f32 buffers of device r, alive until the stream is synchronized
                    // below; the stream is device r's.
                    unsafe {
                        comms[r].all_reduce(
                            sp,
                            rp,
                            n,
                            DataType::F32,
                            ReduceOp::Sum,
                            streams[r].cu_stream(),
                        )?
                    };
                }
                Ok(())
            })
            .unwrap();
            let want: Vec<f32> = (0..n).map(|i| data[0][i] + data[1][i]).collect();
            for r in 0..2 {
                streams[r].synchronize().unwrap();
                assert_eq!(
                    streams[r].clone_dtoh(&recvs[r]).unwrap(),
                    want,
                    "device {r}"
                );
            }
            drop((sends, recvs, comms));
            assert_eq!(segments_left(), Vec::<String>::new());
        },
    );
}

/// The child processes' variables: this rank, and the unique id as hex.
const RANK_VAR: &str = "ROTADAM_NCCL_TEST_RANK";
const ID_VAR: &str = "ROTADAM_NCCL_TEST_ID";

/// Runs this test's body in `world` processes (this test binary again, in the stand-in child's
/// environment, with rank r on device r and one unique id); returns each one's output.
fn rank_processes(test: &str, world: usize, id: &UniqueId) -> Vec<std::process::Output> {
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(RANK_VAR, rank.to_string())
                .env(ID_VAR, id.to_hex())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// This process's rank and unique id, when it is one of [`rank_processes`].
fn as_rank_process() -> Option<(usize, UniqueId)> {
    let rank = std::env::var(RANK_VAR).ok()?.parse().unwrap();
    let id = UniqueId::from_hex(&std::env::var(ID_VAR).unwrap()).unwrap();
    Some((rank, id))
}

/// Two processes, one rank each (rank r on device r; the id made by their parent and passed as hex): an
/// all-reduce and an all-gather give both the same, right answer.
#[test]
fn two_processes_all_reduce_and_all_gather() {
    const TEST: &str = "cuda::nccl::two_processes_all_reduce_and_all_gather";
    child(TEST, false, &[SHORT], || {
        let n = 33;
        let val = |r: usize, i: usize| (r * 100 + i) as f32 + 0.5;
        if let Some((rank, id)) = as_rank_process() {
            let ctx = CudaContext::new(rank).unwrap();
            let stream = ctx.default_stream();
            let comm = Comm::init_rank(2, &id, rank).unwrap();
            let mine: Vec<f32> = (0..n).map(|i| val(rank, i)).collect();
            let sum = all_reduce(&stream, &comm, &mine, DataType::F32, ReduceOp::Sum).unwrap();
            let gathered = all_gather(&stream, &comm, &mine, DataType::F32).unwrap();
            assert_eq!(
                sum,
                (0..n).map(|i| val(0, i) + val(1, i)).collect::<Vec<_>>()
            );
            let want: Vec<f32> = (0..2)
                .flat_map(|r| (0..n).map(move |i| val(r, i)))
                .collect();
            assert_eq!(gathered, want);
            return;
        }
        let id = UniqueId::new().unwrap();
        assert_eq!(UniqueId::from_hex(&id.to_hex()).unwrap(), id);
        for (rank, out) in rank_processes(TEST, 2, &id).iter().enumerate() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "rank {rank}'s process failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(segments_left(), Vec::<String>::new());
    });
}

/// The stand-in's libnccl.so.2 exports exactly the entry points nccl.cpp defines and docs/cuda.md lists,
/// and the binding loads it (NCCL 2.21.5's version code).
#[test]
fn the_nccl_standin_lists_its_entry_points() {
    child(
        "cuda::nccl::the_nccl_standin_lists_its_entry_points",
        false,
        &[],
        || {
            assert!(nccl::available());
            assert_eq!(nccl::version().unwrap(), 22105);
            let repo = super::nvrtc::repo();
            let src = std::fs::read_to_string(repo.join("kernels/standin/nccl.cpp")).unwrap();
            let mut defined: Vec<&str> = src
                .lines()
                .filter_map(|l| l.strip_prefix("STANDIN_API "))
                .map(|rest| {
                    let head = rest.split('(').next().unwrap();
                    head.split_whitespace()
                        .last()
                        .unwrap()
                        .trim_start_matches('*')
                })
                .collect();
            defined.sort_unstable();
            let page = std::fs::read_to_string(repo.join("docs/cuda.md")).unwrap();
            let from = page
                .find("**NCCL's entry points**")
                .expect("docs/cuda.md: NCCL's entry points");
            let to = from + page[from..].find("\n\n").unwrap();
            let mut listed: Vec<&str> = page[from..to]
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| w.starts_with("nccl"))
                .collect();
            listed.sort_unstable();
            assert_eq!(
                listed, defined,
                "docs/cuda.md's list against nccl.cpp's entry points"
            );
            assert_eq!(defined.len(), 17);
            let lib = raw_library();
            for name in &defined {
                // SAFETY: only looked up, never called.
                let sym = unsafe { lib.get::<*const ()>(name.as_bytes()) };
                assert!(sym.is_ok(), "{name} is not exported");
            }
        },
    );
}

/// Without the stand-in (this process never loads it), the binding opens `libnccl.so.2` by name: where NCCL
/// is not installed (as on the development machine) that is an error saying NCCL is needed for more than
/// one device and how to install it; where it is, the version is NCCL 2's.
#[test]
fn without_the_standin_a_missing_nccl_says_how_to_install_it() {
    assert!(!standin::active());
    match nccl::version() {
        Ok(v) => assert!((20000..30000).contains(&v), "NCCL version code {v}"),
        Err(e) => {
            let e = e.to_string();
            assert!(!nccl::available());
            for says in [
                "libnccl.so.2",
                "more than one device",
                "pip install nvidia-nccl-cu12",
                "LD_LIBRARY_PATH",
                "libnccl2",
            ] {
                assert!(e.contains(says), "does not say {says}: {e}");
            }
        }
    }
}

// ---- planted misuses: each must be reported by the stand-in ----------------------------------------------

/// The stand-in's libnccl.so.2, for calls the binding cannot express (an invalid type or op, a NULL or
/// destroyed communicator, ncclGroupEnd without a start).
fn raw_library() -> libloading::Library {
    let path = standin::dir().unwrap().join(nccl::LIBRARY);
    // SAFETY: already loaded by the binding (the same handle, no initialiser runs again).
    unsafe { libloading::Library::new(path) }.unwrap()
}

/// The stand-in's report, which must contain every one of `lines`; then forgotten.
fn reported(lines: &[&str]) {
    let (count, report) = standin::errors().unwrap();
    for line in lines {
        assert!(
            report.contains(line),
            "not reported: {line}\nreport ({count}):\n{report}"
        );
    }
    standin::clear_errors().unwrap();
}

/// Rank 0 calls an all-reduce of 12 floats where rank 1 calls an all-gather of 10: both collectives fail
/// when their streams run (the contexts fail, as after a GPU fault), each naming both calls.
#[test]
fn planted_mismatched_collectives_are_reported() {
    child(
        "cuda::nccl::planted_mismatched_collectives_are_reported",
        true,
        &[SHORT],
        || {
            let errs = ranks(2, |rank, stream, comm| {
                let r = if rank == 0 {
                    all_reduce(stream, comm, &[1.0f32; 12], DataType::F32, ReduceOp::Sum)
                } else {
                    all_gather(stream, comm, &[1.0f32; 10], DataType::F32)
                };
                assert!(
                    r.is_err(),
                    "rank {rank}: the mismatched collective succeeded"
                );
                standin::last_error().unwrap_or_default()
            });
            let what = "rank 1 called ncclAllGather(count 10, float32) where rank 0 called \
                        ncclAllReduce(count 12, float32, sum)";
            for (rank, e) in errs.iter().enumerate() {
                assert!(e.contains(what), "rank {rank}: {e}");
            }
            reported(&[what]);
        },
    );
}

/// Arguments NCCL refuses (as with NCCL_CHECK_POINTERS=1), each reported with NCCL's code and nothing
/// queued: a buffer on another device, a buffer too short for the count, overlapping buffers that are not
/// the in-place form, a root that is not a rank, a float16 reduction, a stream of another device, an
/// invalid type and op, a NULL and a destroyed communicator, ncclGroupEnd without ncclGroupStart, and one
/// thread issuing two ranks' collectives outside a group (which real NCCL may deadlock on; issued again
/// inside a group, they complete).
#[test]
fn planted_bad_arguments_are_refused() {
    child(
        "cuda::nccl::planted_bad_arguments_are_refused",
        true,
        &[SHORT],
        || {
            let ctx1 = CudaContext::new(1).unwrap();
            let ctx0 = CudaContext::new(0).unwrap(); // created last: current
            let (s0, s1) = (ctx0.default_stream(), ctx1.new_stream().unwrap());
            ctx0.bind_to_thread().unwrap();
            let comm = Comm::init_rank(1, &UniqueId::new().unwrap(), 0).unwrap();
            let a = s0.alloc_zeros::<f32>(12).unwrap();
            let b = s0.alloc_zeros::<f32>(12).unwrap();
            let short = s0.alloc_zeros::<f32>(8).unwrap();
            let other = s1.alloc_zeros::<f32>(12).unwrap();
            let (ap, _ga) = a.device_ptr(&s0);
            let (bp, _gb) = b.device_ptr(&s0);
            let (shortp, _gs) = short.device_ptr(&s0);
            let (otherp, _go) = other.device_ptr(&s1);
            let cu = s0.cu_stream();
            let (f32_, sum) = (DataType::F32, ReduceOp::Sum);
            let refused = |what: &str, r: rotadam::Result<()>, code: &str, says: &str| {
                let e = r.expect_err(what).to_string();
                assert!(e.contains(code) && e.contains(says), "{what}: {e}");
            };
            const ARG: &str = "ncclInvalidArgument";
            // SAFETY (each call below): deliberately wrong arguments the stand-in must refuse before it
            // queues anything; the buffers are live device allocations.
            unsafe {
                refused(
                    "a buffer on device 1",
                    comm.all_reduce(otherp, bp, 12, f32_, sum, cu),
                    ARG,
                    "belongs to device 1's primary context, not to device 0's primary context",
                );
                refused(
                    "a buffer too short",
                    comm.all_reduce(ap, shortp, 12, f32_, sum, cu),
                    ARG,
                    "recvbuff (48 bytes): 48 bytes at",
                );
                refused(
                    "overlapping buffers",
                    comm.all_reduce(ap, ap + 4, 11, f32_, sum, cu),
                    ARG,
                    "overlap, and not in the in-place form (sendbuff == recvbuff)",
                );
                refused(
                    "root 1 of 1 rank",
                    comm.broadcast(ap, bp, 12, f32_, 1, cu),
                    ARG,
                    "root 1 is not a rank of the communicator (nranks 1)",
                );
                refused(
                    "a float16 sum",
                    comm.all_reduce(ap, bp, 12, DataType::F16, sum, cu),
                    ARG,
                    "the stand-in does not reduce float16",
                );
                refused(
                    "a stream of device 1",
                    comm.all_reduce(ap, bp, 12, f32_, sum, s1.cu_stream()),
                    ARG,
                    "stream: stream #",
                );
            }
            // what the binding cannot express, through the C API
            type AllReduce = unsafe extern "C" fn(
                u64,
                u64,
                usize,
                i32,
                i32,
                *mut std::ffi::c_void,
                cudarc::driver::sys::CUstream,
            ) -> i32;
            type InitRank =
                unsafe extern "C" fn(*mut *mut std::ffi::c_void, i32, UniqueId, i32) -> i32;
            let lib = raw_library();
            // the raw communicator's device
            ctx0.bind_to_thread().unwrap();
            // SAFETY: the symbols have these C signatures (NCCL 2.x's C API); the calls pass deliberately
            // wrong values the stand-in must refuse, and buffers that are live device allocations.
            unsafe {
                let all_reduce = *lib.get::<AllReduce>(b"ncclAllReduce").unwrap();
                let init_rank = *lib.get::<InitRank>(b"ncclCommInitRank").unwrap();
                let destroy = *lib
                    .get::<unsafe extern "C" fn(*mut std::ffi::c_void) -> i32>(b"ncclCommDestroy")
                    .unwrap();
                let group_end = *lib
                    .get::<unsafe extern "C" fn() -> i32>(b"ncclGroupEnd")
                    .unwrap();
                let mut raw = std::ptr::null_mut();
                assert_eq!(init_rank(&mut raw, 1, UniqueId::new().unwrap(), 0), 0);
                // the leak check the other tests end with sees a communicator not destroyed (this one, until
                // its ncclCommDestroy below; `comm` stays live to the end)
                assert_eq!(segments_left().len(), 2, "{:?}", segments_left());
                assert_eq!(all_reduce(ap, bp, 12, 12, 0, raw, cu), 4, "datatype 12");
                assert_eq!(all_reduce(ap, bp, 12, 7, 7, raw, cu), 4, "op 7");
                assert_eq!(
                    all_reduce(ap, bp, 12, 7, 0, std::ptr::null_mut(), cu),
                    4,
                    "a NULL comm"
                );
                assert_eq!(destroy(raw), 0);
                assert_eq!(segments_left().len(), 1, "{:?}", segments_left());
                assert_eq!(all_reduce(ap, bp, 12, 7, 0, raw, cu), 4, "a destroyed comm");
                assert_eq!(group_end(), 5, "ncclGroupEnd without a start");
            }
            reported(&[
                "ncclAllReduce: ncclAllReduce(count 12, float32, sum) on communicator #",
                "belongs to device 1's primary context, not to device 0's primary context [ncclInvalidArgument]",
                "run 16 bytes past the end of allocation #",
                "root 1 is not a rank of the communicator (nranks 1) [ncclInvalidArgument]",
                "the stand-in does not reduce float16",
                "datatype 12 is not an ncclDataType_t (0 to 9) [ncclInvalidArgument]",
                "op 7 is not an ncclRedOp_t",
                "ncclAllReduce: comm is NULL [ncclInvalidArgument]",
                "was destroyed by ncclCommDestroy [ncclInvalidArgument]",
                "ncclGroupEnd: no ncclGroupStart to end (group calls nest) [ncclInvalidUsage]",
            ]);

            // one thread, two ranks, outside a group: the second is refused; inside a group, it completes
            let comms = Comm::init_all(&[0, 1]).unwrap();
            let d = [vec![1.5f32; 4], vec![2.25f32; 4]];
            let sends = [s0.clone_htod(&d[0]).unwrap(), s1.clone_htod(&d[1]).unwrap()];
            let mut recvs = [
                s0.alloc_zeros::<f32>(4).unwrap(),
                s1.alloc_zeros::<f32>(4).unwrap(),
            ];
            let streams = [&s0, &s1];
            let issue = |r: usize, recv: &mut cudarc::driver::CudaSlice<f32>| {
                let (sp, _g1) = sends[r].device_ptr(streams[r]);
                let (rp, _g2) = recv.device_ptr_mut(streams[r]);
                // SAFETY: 4-element f32 buffers of device r, alive until its stream is synchronized below.
                unsafe { comms[r].all_reduce(sp, rp, 4, f32_, sum, streams[r].cu_stream()) }
            };
            let [r0, r1] = &mut recvs;
            issue(0, r0).unwrap();
            refused(
                "rank 1 outside a group",
                issue(1, r1),
                "ncclInvalidUsage",
                "outside a group",
            );
            nccl::group(|| issue(1, r1)).unwrap();
            for (r, s) in streams.iter().enumerate() {
                assert_eq!(
                    s.clone_dtoh(&recvs[r]).unwrap(),
                    vec![3.75f32; 4],
                    "device {r}"
                );
            }
            reported(&["from the thread that called rank 0's collectives of this communicator outside a group"]);
        },
    );
}

/// Initializations NCCL refuses: nranks that disagree with the communicator's (both named), a rank claimed
/// twice, a rank or nranks out of range, two ranks on one device, a rank that never joins (the timeout, 1 s
/// here), and a malformed ROTADAM_STANDIN_NCCL_TIMEOUT.
#[test]
fn planted_bad_initializations_are_refused() {
    const TEST: &str = "cuda::nccl::planted_bad_initializations_are_refused";
    child(TEST, true, &[(TIMEOUT, "1")], || {
        let _ctx = CudaContext::new(0).unwrap();
        let id = UniqueId::new().unwrap();
        let first = nccl::group(|| {
            let c0 = Comm::init_rank(2, &id, 0)?; // completed at the group's end
            let e = Comm::init_rank(3, &id, 1)
                .err()
                .expect("nranks 3 accepted")
                .to_string();
            assert!(
                e.contains("nranks 3 (rank 1) where the communicator was created with nranks 2 (by rank 0)"),
                "{e}"
            );
            let e = Comm::init_rank(2, &id, 0)
                .err()
                .expect("rank 0 claimed twice")
                .to_string();
            assert!(
                e.contains("ncclInvalidUsage")
                    && e.contains("rank 0 of the communicator was already claimed"),
                "{e}"
            );
            Ok(c0)
        });
        assert!(first.is_err(), "the group's errors are its end's");
        for (world, rank, says) in [
            (2, 2, "rank 2 is not from 0 to nranks - 1 = 1"),
            (0, 0, "nranks 0 is not from 1 to 256"),
        ] {
            let e = Comm::init_rank(world, &id, rank)
                .err()
                .expect(says)
                .to_string();
            assert!(e.contains(says) && e.contains("ncclInvalidArgument"), "{e}");
        }
        // two ranks (threads) on one device
        let id = UniqueId::new().unwrap();
        let dup = std::thread::scope(|s| {
            let h: Vec<_> = (0..2)
                .map(|rank| {
                    let id = &id;
                    s.spawn(move || {
                        let _ctx = CudaContext::new(0).unwrap();
                        Comm::init_rank(2, id, rank).err().map(|e| e.to_string())
                    })
                })
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        let says = "Duplicate GPU detected: rank 0 and rank 1 both on CUDA device 0";
        for e in &dup {
            let e = e.as_deref().expect("two ranks on device 0 accepted");
            assert!(e.contains(says) && e.contains("ncclInvalidUsage"), "{e}");
        }
        let start = Instant::now();
        let e = Comm::init_rank(2, &UniqueId::new().unwrap(), 0)
            .err()
            .expect("a lone rank of 2 joined")
            .to_string();
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "gave up before the timeout"
        );
        let never = "waited 1 s (ROTADAM_STANDIN_NCCL_TIMEOUT) for rank(s) 1 to join";
        assert!(e.contains("ncclRemoteError") && e.contains(never), "{e}");
        reported(&[
            "where the communicator was created with nranks 2",
            "was already claimed",
            "Duplicate GPU detected",
            never,
        ]);
        assert_eq!(segments_left(), Vec::<String>::new());
    });
    child(TEST, true, &[(TIMEOUT, "2s")], || {
        let _ctx = CudaContext::new(0).unwrap();
        let e = Comm::init_rank(1, &UniqueId::new().unwrap(), 0)
            .err()
            .expect("2s accepted")
            .to_string();
        let says =
            "ROTADAM_STANDIN_NCCL_TIMEOUT=\"2s\" is not a whole number of seconds from 1 to 86400";
        assert!(e.contains(says), "{e}");
        reported(&[says]);
    });
}

/// A peer that never makes the call: a query of rank 0's stream says not ready (it does not wait), and its
/// all-reduce fails after the timeout (1 s here), naming the call, the rank and the peer that never
/// arrived.
#[test]
fn planted_peer_that_never_calls_times_out() {
    child(
        "cuda::nccl::planted_peer_that_never_calls_times_out",
        true,
        &[(TIMEOUT, "1")],
        || {
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let wait = std::sync::Mutex::new(wait);
            let errs = ranks(2, |rank, stream, comm| {
                if rank == 1 {
                    // keeps its communicator until rank 0 gave up, and never calls
                    wait.lock().unwrap().recv().unwrap();
                    return String::new();
                }
                let start = Instant::now();
                let send = stream.clone_htod(&[1.0f32; 5]).unwrap();
                let mut recv = stream.alloc_zeros::<f32>(5).unwrap();
                {
                    let (sp, _gs) = send.device_ptr(stream);
                    let (rp, _gr) = recv.device_ptr_mut(stream);
                    // SAFETY: 5-element f32 buffers of device 0, alive until the read back below
                    // synchronizes the stream.
                    unsafe {
                        comm.all_reduce(sp, rp, 5, DataType::F32, ReduceOp::Sum, stream.cu_stream())
                    }
                    .unwrap();
                }
                // a query does not wait: the collective is not ready while its peer has not called
                // SAFETY: a live stream of this thread's current context.
                let query = unsafe { cudarc::driver::sys::cuStreamQuery(stream.cu_stream()) };
                assert_eq!(query, cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY);
                let r = stream.clone_dtoh(&recv);
                let waited = start.elapsed();
                done.send(()).unwrap();
                assert!(r.is_err(), "the all-reduce without its peer succeeded");
                assert!(
                    waited >= Duration::from_secs(1) && waited < Duration::from_secs(15),
                    "{waited:?}"
                );
                standin::last_error().unwrap_or_default()
            });
            let says = "ncclAllReduce(count 5, float32, sum) on rank 0 of 2 (collective #1)";
            let why =
                "timed out after 1 s (ROTADAM_STANDIN_NCCL_TIMEOUT) waiting for rank(s) 1 to \
                       post collective #1";
            assert!(
                errs[0].contains(says) && errs[0].contains(why),
                "{}",
                errs[0]
            );
            reported(&[why]);
        },
    );
}

/// A peer that aborts its communicator (`Comm::abort`, ncclCommAbort) instead of calling: the other rank's
/// all-reduce fails at once — long before its timeout (60 s here) — saying so.
#[test]
fn planted_aborted_peer_fails_the_collective() {
    child(
        "cuda::nccl::planted_aborted_peer_fails_the_collective",
        true,
        &[(TIMEOUT, "60")],
        || {
            let id = UniqueId::new().unwrap();
            let (aborted, wait) = std::sync::mpsc::channel::<()>();
            let peer = std::thread::spawn(move || {
                let _ctx = CudaContext::new(1).unwrap();
                let comm = Comm::init_rank(2, &id, 1).unwrap();
                comm.abort().unwrap();
                aborted.send(()).unwrap();
            });
            let ctx = CudaContext::new(0).unwrap();
            let stream = ctx.default_stream();
            let comm = Comm::init_rank(2, &id, 0).unwrap();
            wait.recv().unwrap();
            let start = Instant::now();
            let r = all_reduce(&stream, &comm, &[1.0f32; 3], DataType::F32, ReduceOp::Sum);
            assert!(r.is_err(), "the all-reduce with an aborted peer succeeded");
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?}",
                start.elapsed()
            );
            let e = standin::last_error().unwrap_or_default();
            let says = "rank 1 will never post collective #1: rank 1 called ncclCommAbort";
            assert!(e.contains(says), "{e}");
            peer.join().unwrap();
            reported(&[says]);
        },
    );
}

/// A peer process that exits (its communicator destroyed) before the collective: the survivor's
/// all-reduce fails at once — long before its timeout (60 s here) — naming the process that exited.
#[test]
fn planted_peer_process_that_exits_is_reported() {
    const TEST: &str = "cuda::nccl::planted_peer_process_that_exits_is_reported";
    child(TEST, true, &[(TIMEOUT, "60")], || {
        if let Some((rank, id)) = as_rank_process() {
            let ctx = CudaContext::new(rank).unwrap();
            let stream = ctx.default_stream();
            let comm = Comm::init_rank(2, &id, rank).unwrap();
            if rank == 1 {
                return; // exits, its communicator destroyed, without the all-reduce
            }
            let start = Instant::now();
            let r = all_reduce(&stream, &comm, &[1.0f32; 3], DataType::F32, ReduceOp::Sum);
            assert!(r.is_err(), "the all-reduce without its peer succeeded");
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?}",
                start.elapsed()
            );
            let e = standin::last_error().unwrap_or_default();
            assert!(
                e.contains("rank 1 (process ")
                    && e.contains("exited before it posted collective #1"),
                "{e}"
            );
            standin::clear_errors().unwrap();
            return;
        }
        let id = UniqueId::new().unwrap();
        for (rank, out) in rank_processes(TEST, 2, &id).iter().enumerate() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "rank {rank}'s process failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(segments_left(), Vec::<String>::new());
    });
}
