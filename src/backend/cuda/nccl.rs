//! NCCL's collectives between devices — ranks as threads of one process or as processes of one machine —
//! for data-parallel training: communicators ([`Comm`]), all-reduce, all-gather, reduce-scatter and
//! broadcast on raw device pointers queued on a stream, group calls ([`group`]).
//!
//! `libnccl.so.2` is loaded at run time with libloading, like the rest of the CUDA stack: by absolute path
//! from the stand-in's directory when the driver stand-in is loaded (`super::standin`, whose
//! `libnccl.so.2` runs the collectives through shared memory: `docs/cuda.md`), else by the bare name
//! `libnccl.so.2`, the name NCCL's runtime installs (the PyPI wheel `nvidia-nccl-cu12` and the
//! distributions' `libnccl2` package). cudarc 0.19 has NCCL bindings, but its loader looks for
//! `libnccl.so`, `libnccl.so.<CUDA major>` and other numbered names, never `libnccl.so.2`, so it cannot find
//! either of those installations without a symlink: this module binds the 17 functions it needs itself.
//! A missing library is an error saying how to install it, raised only when NCCL is used (one device needs
//! none).
//!
//! Errors name the NCCL call and carry NCCL's error string and `ncclGetLastError`, plus the stand-in's
//! account of the failure when the stand-in is loaded.

use super::standin;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUstream;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt;
use std::sync::OnceLock;

/// The library's file name: its SONAME, as NCCL's packages install it.
pub const LIBRARY: &str = "libnccl.so.2";

/// ncclResult_t: 0 is ncclSuccess.
type NcclResult = c_int;
/// ncclComm_t: an opaque pointer.
type RawComm = *mut c_void;

/// NCCL's 128-byte unique id (`ncclUniqueId`): made once by one rank ([`UniqueId::new`]) and given to every
/// rank of the communicator (as hex text across processes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId(pub [u8; 128]);

impl UniqueId {
    /// A new id (`ncclGetUniqueId`).
    pub fn new() -> Result<Self> {
        let api = api()?;
        let mut id = UniqueId([0; 128]);
        // SAFETY: `id` is a writable ncclUniqueId (repr(C), 128 bytes), which is all the call writes.
        check("ncclGetUniqueId", unsafe { (api.get_unique_id)(&mut id) })?;
        Ok(id)
    }

    /// The id as 256 lowercase hex digits (to pass to another process).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The id from [`UniqueId::to_hex`]'s text: exactly 256 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bad = |msg: String| Error::Config {
            field: "NCCL unique id".into(),
            msg,
        };
        if s.len() != 256 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "expected 256 hex digits, got {} characters{}",
                s.len(),
                if s.is_ascii() { "" } else { " (not ASCII)" }
            )));
        }
        let mut id = [0u8; 128];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|e| bad(format!("byte {i}: {e}")))?;
        }
        Ok(UniqueId(id))
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueId({})", self.to_hex())
    }
}

/// The element types (`ncclDataType_t`). The stand-in reduces all but `F16` and `Bf16` (which it broadcasts
/// and gathers: byte copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    I8,
    U8,
    I32,
    U32,
    I64,
    U64,
    F16,
    F32,
    F64,
    Bf16,
}

impl DataType {
    /// Its ncclDataType_t value.
    fn code(self) -> c_int {
        match self {
            DataType::I8 => 0,
            DataType::U8 => 1,
            DataType::I32 => 2,
            DataType::U32 => 3,
            DataType::I64 => 4,
            DataType::U64 => 5,
            DataType::F16 => 6,
            DataType::F32 => 7,
            DataType::F64 => 8,
            DataType::Bf16 => 9,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::I8 | DataType::U8 => 1,
            DataType::F16 | DataType::Bf16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }
}

/// The reductions (`ncclRedOp_t`). `Avg` is the sum divided by the number of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Prod,
    Max,
    Min,
    Avg,
}

impl ReduceOp {
    /// Its ncclRedOp_t value.
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
            ReduceOp::Avg => 4,
        }
    }
}

/// The loaded library's entry points (NCCL 2.x's C API, as NCCL's documentation declares them).
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> NcclResult,
    comm_init_all: unsafe extern "C" fn(*mut RawComm, c_int, *const c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_count: unsafe extern "C" fn(RawComm, *mut c_int) -> NcclResult,
    comm_cu_device: unsafe extern "C" fn(RawComm, *mut c_int) -> NcclResult,
    comm_user_rank: unsafe extern "C" fn(RawComm, *mut c_int) -> NcclResult,
    #[allow(clippy::type_complexity)]
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    #[allow(clippy::type_complexity)]
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    #[allow(clippy::type_complexity)]
    reduce_scatter: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    #[allow(clippy::type_complexity)]
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_last_error: unsafe extern "C" fn(RawComm) -> *const c_char,
    /// Keeps the functions above valid: loaded for the rest of the process.
    _lib: libloading::Library,
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// Loads the library once (module docs).
fn load() -> std::result::Result<Api, String> {
    standin::activate().map_err(|e| e.to_string())?;
    let path = match standin::dir() {
        Some(dir) => dir.join(LIBRARY),
        None => LIBRARY.into(),
    };
    // SAFETY: loading runs the library's initialisers: NCCL's (or the stand-in's, which only set up its own
    // state) have no preconditions on this process.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
        format!(
            "NCCL ({}) is needed to train on more than one device, and it cannot be loaded: {e}. \
             Install it with `pip install nvidia-nccl-cu12` and put its lib directory \
             (site-packages/nvidia/nccl/lib) on LD_LIBRARY_PATH, or install the distribution's \
             libnccl2 package",
            path.display()
        )
    })?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: each field's fn type is the C signature NCCL 2.x declares for `$name` (its ABI:
            // ncclResult_t and the enums are C ints, ncclComm_t a pointer, ncclUniqueId 128 bytes passed by
            // value as a repr(C) struct, cudaStream_t is CUstream); `_lib` keeps the symbol loaded.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("{}: no {} in it: {e}", path.display(), $name))?
        };
    }
    Ok(Api {
        get_version: sym!("ncclGetVersion"),
        get_unique_id: sym!("ncclGetUniqueId"),
        comm_init_rank: sym!("ncclCommInitRank"),
        comm_init_all: sym!("ncclCommInitAll"),
        comm_destroy: sym!("ncclCommDestroy"),
        comm_abort: sym!("ncclCommAbort"),
        comm_count: sym!("ncclCommCount"),
        comm_cu_device: sym!("ncclCommCuDevice"),
        comm_user_rank: sym!("ncclCommUserRank"),
        all_reduce: sym!("ncclAllReduce"),
        broadcast: sym!("ncclBroadcast"),
        reduce_scatter: sym!("ncclReduceScatter"),
        all_gather: sym!("ncclAllGather"),
        group_start: sym!("ncclGroupStart"),
        group_end: sym!("ncclGroupEnd"),
        get_error_string: sym!("ncclGetErrorString"),
        get_last_error: sym!("ncclGetLastError"),
        _lib: lib,
    })
}

fn api() -> Result<&'static Api> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| Error::Device(e.clone()))
}

/// Whether `libnccl.so.2` loads (the stand-in's when the stand-in is loaded).
pub fn available() -> bool {
    api().is_ok()
}

/// NCCL's version code (`ncclGetVersion`: major × 10000 + minor × 100 + patch, e.g. 22105 for 2.21.5).
pub fn version() -> Result<i32> {
    let api = api()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a writable int.
    check("ncclGetVersion", unsafe { (api.get_version)(&mut v) })?;
    Ok(v)
}

/// A C string NCCL returned, as text ("" for NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `Ok` for ncclSuccess; else an error naming `call`, with NCCL's error string, its last error and the
/// stand-in's account.
fn check(call: &str, r: NcclResult) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    let mut msg = format!("{call} failed (ncclResult_t {r}");
    if let Ok(api) = api() {
        // SAFETY: ncclGetErrorString takes any value and returns a static string; ncclGetLastError (its
        // argument unused: NCCL keeps the calling thread's last error) returns a string valid until this
        // thread's next NCCL call, copied at once.
        let (what, last) = unsafe {
            (
                text((api.get_error_string)(r)),
                text((api.get_last_error)(std::ptr::null_mut())),
            )
        };
        msg.push_str(&format!(": {what})"));
        if !last.is_empty() {
            msg.push_str(&format!(": {last}"));
        }
        if let Some(detail) = standin::last_error().filter(|d| *d != last) {
            msg.push_str(&format!(" [stand-in: {detail}]"));
        }
    } else {
        msg.push(')');
    }
    Err(Error::Device(msg))
}

/// `x` as a C int, or an error naming it.
fn int(x: usize, what: &str) -> Result<c_int> {
    c_int::try_from(x).map_err(|_| Error::Device(format!("NCCL: {what} = {x} exceeds a C int")))
}

/// One rank's communicator (`ncclComm_t`); destroyed on drop (`ncclCommDestroy`).
pub struct Comm {
    raw: RawComm,
    rank: usize,
    world: usize,
    device: usize,
}

// SAFETY: NCCL lets a communicator be used from any thread, one thread at a time (its documentation forbids
// only concurrent use): moving it to another thread is sound. It is not Sync (the raw pointer keeps it so),
// so two threads can never call it at once.
unsafe impl Send for Comm {}

impl Comm {
    /// This rank's communicator; the calling thread must have `device`'s context current (cudarc's
    /// CudaContext::bind_to_thread). Returns once every rank of `world` has joined with `id` (as NCCL
    /// does). Not for use inside [`group`]: it queries the new communicator (rank, size, device), which
    /// NCCL refuses before the group ends; one thread initializing several ranks uses
    /// [`Comm::init_all`].
    pub fn init_rank(world: usize, id: &UniqueId, rank: usize) -> Result<Comm> {
        let api = api()?;
        // (a rank or world NCCL refuses is its error, reported by the stand-in)
        let (w, r) = (int(world, "world")?, int(rank, "rank")?);
        let mut raw: RawComm = std::ptr::null_mut();
        // SAFETY: `raw` is a writable ncclComm_t; the id is passed by value (a copy).
        check("ncclCommInitRank", unsafe {
            (api.comm_init_rank)(&mut raw, w, *id, r)
        })?;
        Self::wrap(raw, "ncclCommInitRank")
    }

    /// One communicator per device of `devices` (rank i on `devices[i]`), all driven by this process
    /// (`ncclCommInitAll`); their collectives from one thread go inside [`group`].
    pub fn init_all(devices: &[usize]) -> Result<Vec<Comm>> {
        let api = api()?;
        let list: Vec<c_int> = devices
            .iter()
            .map(|&d| int(d, "device"))
            .collect::<Result<_>>()?;
        let mut raw: Vec<RawComm> = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `raw` has room for one ncclComm_t per device and `list` holds that many ints.
        check("ncclCommInitAll", unsafe {
            (api.comm_init_all)(raw.as_mut_ptr(), int(devices.len(), "ndev")?, list.as_ptr())
        })?;
        let mut comms = Vec::with_capacity(raw.len());
        for (i, &r) in raw.iter().enumerate() {
            match Self::wrap(r, "ncclCommInitAll") {
                Ok(c) => comms.push(c),
                Err(e) => {
                    for &rest in &raw[i + 1..] {
                        // SAFETY: a communicator ncclCommInitAll returned, not wrapped (so destroyed once).
                        unsafe { (api.comm_destroy)(rest) };
                    }
                    return Err(e);
                }
            }
        }
        Ok(comms)
    }

    /// Owns `raw` (destroyed on error too) and reads its rank, size and device.
    fn wrap(raw: RawComm, call: &str) -> Result<Comm> {
        let mut comm = Comm {
            raw,
            rank: 0,
            world: 0,
            device: 0,
        };
        let api = api()?;
        let get = |f: unsafe extern "C" fn(RawComm, *mut c_int) -> NcclResult, name: &str| {
            let mut v: c_int = 0;
            // SAFETY: `raw` is a communicator NCCL returned to `call`; `v` is a writable int.
            check(name, unsafe { f(raw, &mut v) })?;
            usize::try_from(v).map_err(|_| Error::Device(format!("{call}: {name} returned {v}")))
        };
        comm.rank = get(api.comm_user_rank, "ncclCommUserRank")?;
        comm.world = get(api.comm_count, "ncclCommCount")?;
        comm.device = get(api.comm_cu_device, "ncclCommCuDevice")?;
        Ok(comm)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The CUDA device of this rank (its buffers' and streams' device).
    pub fn device(&self) -> usize {
        self.device
    }

    /// Aborts the communicator (`ncclCommAbort`): its pending collectives fail, on its peers too.
    pub fn abort(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        let api = api()?;
        // SAFETY: a live communicator, released here once (ManuallyDrop: no ncclCommDestroy after it).
        check("ncclCommAbort", unsafe { (api.comm_abort)(this.raw) })
    }

    /// recv = send reduced with `op` over the ranks, `count` elements of `dt` each (`ncclAllReduce`); in
    /// place when `send == recv`. All four collectives operate on raw device pointers (CUdeviceptr as u64)
    /// and are queued on `stream` (cudarc::driver::sys::CUstream): they complete when the stream does.
    ///
    /// # Safety
    /// `send` and `recv` are device pointers of this rank's device, valid for `count` elements of `dt`
    /// until the work queued on `stream` completes, not used meanwhile by other work that would race with
    /// it; `stream` is a live stream of this rank's device.
    pub unsafe fn all_reduce(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dt: DataType,
        op: ReduceOp,
        stream: CUstream,
    ) -> Result<()> {
        let api = api()?;
        // SAFETY: the caller's contract; the communicator is live.
        let r = unsafe {
            (api.all_reduce)(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dt.code(),
                op.code(),
                self.raw,
                stream,
            )
        };
        check("ncclAllReduce", r)
    }

    /// recv = the ranks' `send` (`send_count` elements of `dt` each) one after another in rank order
    /// (`ncclAllGather`); in place when `send == recv + rank * send_count * size`.
    ///
    /// # Safety
    /// As [`Comm::all_reduce`], with `send` valid for `send_count` elements and `recv` for
    /// `world * send_count`.
    pub unsafe fn all_gather(
        &self,
        send: u64,
        recv: u64,
        send_count: usize,
        dt: DataType,
        stream: CUstream,
    ) -> Result<()> {
        let api = api()?;
        // SAFETY: the caller's contract; the communicator is live.
        let r = unsafe {
            (api.all_gather)(
                send as *const c_void,
                recv as *mut c_void,
                send_count,
                dt.code(),
                self.raw,
                stream,
            )
        };
        check("ncclAllGather", r)
    }

    /// recv = this rank's block (`recv_count` elements at `rank * recv_count`) of `send` reduced with `op`
    /// over the ranks (`ncclReduceScatter`); in place when `recv == send + rank * recv_count * size`.
    ///
    /// # Safety
    /// As [`Comm::all_reduce`], with `send` valid for `world * recv_count` elements and `recv` for
    /// `recv_count`.
    pub unsafe fn reduce_scatter(
        &self,
        send: u64,
        recv: u64,
        recv_count: usize,
        dt: DataType,
        op: ReduceOp,
        stream: CUstream,
    ) -> Result<()> {
        let api = api()?;
        // SAFETY: the caller's contract; the communicator is live.
        let r = unsafe {
            (api.reduce_scatter)(
                send as *const c_void,
                recv as *mut c_void,
                recv_count,
                dt.code(),
                op.code(),
                self.raw,
                stream,
            )
        };
        check("ncclReduceScatter", r)
    }

    /// recv = rank `root`'s `send`, `count` elements of `dt` (`ncclBroadcast`; `send` is read on the root
    /// only); in place when `send == recv`.
    ///
    /// # Safety
    /// As [`Comm::all_reduce`] (`send` on the root only).
    pub unsafe fn broadcast(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dt: DataType,
        root: usize,
        stream: CUstream,
    ) -> Result<()> {
        let api = api()?;
        let root = int(root, "root")?;
        // SAFETY: the caller's contract; the communicator is live.
        let r = unsafe {
            (api.broadcast)(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dt.code(),
                root,
                self.raw,
                stream,
            )
        };
        check("ncclBroadcast", r)
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: a live communicator, destroyed once. A failure cannot be returned from drop; the
            // stand-in reports it itself.
            unsafe { (api.comm_destroy)(self.raw) };
        }
    }
}

/// Runs `f` between `ncclGroupStart` and `ncclGroupEnd` (ended on error too): the calls in it are issued
/// together, as one thread driving several ranks must issue them. The first error wins: `f`'s, else the
/// group end's.
pub fn group<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let api = api()?;
    // SAFETY: no arguments; NCCL keeps the group depth per thread.
    check("ncclGroupStart", unsafe { (api.group_start)() })?;
    let out = f();
    // SAFETY: ends the group started above, on this thread.
    let end = check("ncclGroupEnd", unsafe { (api.group_end)() });
    let v = out?;
    end.map(|()| v)
}
