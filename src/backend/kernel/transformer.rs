//! Launch plans of the transformer ops: encoder, layernorm, attention, gelu, residual, the pieces around a
//! GEMM (bias, bf16 rounding and conversion) and the fused cross-entropy. Each plan checks the shapes
//! (a mismatch is the caller's bug: a panic naming the op and the tensor), stages the host arrays it
//! needs (tokens, targets), and launches through the typed launchers of [`launch`] at the geometry the
//! kernel file documents.

use super::{flat, launch, warp_rows, Dev, DevMut, Exec, Geometry, Mem, BLOCK};
use crate::backend::cpu::check_len;
use crate::error::Result;

// SAFETY (for every `unsafe` launch below): every tensor is live (a `Dev`/`DevMut` borrows its `Mem`) and
// the typed launcher checks that it is memory of `e` (`Dev::check_space`); the lengths of all tensors are
// checked against the shapes first and the index arrays (tokens, targets) against the tensors they index,
// so every address the kernel forms at this geometry is inside a tensor; the typed launcher supplies the
// kernel's own argument list.

/// `x` as a CUDA `int` dimension (panics with the op and name if it does not fit).
#[track_caller]
pub(crate) fn dim(op: &str, name: &str, x: usize) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {name} = {x} does not fit a CUDA int"))
}

/// Panics unless every index is < `len` (an out-of-range index would be an out-of-bounds access).
#[track_caller]
pub(crate) fn check_index(op: &str, index: &[u32], len: usize) {
    if let Some((pos, &i)) = index.iter().enumerate().find(|(_, &i)| i as usize >= len) {
        panic!("{op}: index[{pos}] = {i} is out of bounds for {len} elements");
    }
}

/// Checks that every tensor has `n` elements.
#[track_caller]
pub(crate) fn same_len(op: &str, n: usize, named: &[(&str, usize)]) {
    for (name, len) in named {
        check_len(op, name, *len, n);
    }
}

/// out = value
pub fn fill<E: Exec>(e: &E, out: DevMut<f32>, value: f32) -> Result<()> {
    // SAFETY: `out` is the kernel's only tensor and it writes out[i] only for i < n = out.len (its guard), so
    // every access is inside `out`; the generated launcher passes fill's own argument list.
    unsafe { launch::fill(e, flat(out.len), out, value, out.len as i64) }
}

/// out *= s
pub fn scale<E: Exec>(e: &E, out: DevMut<f32>, s: f32) -> Result<()> {
    // SAFETY: `out` is the kernel's only tensor and it scales out[i] only for i < n = out.len (its guard), so
    // every access is inside `out`; the generated launcher passes scale's own argument list.
    unsafe { launch::scale(e, flat(out.len), out, s, out.len as i64) }
}

/// out (B,T,C) = wte[tokens] + wpe[t]
pub fn encoder_forward<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    tokens: &[u32],
    wte: Dev<f32>,
    wpe: Dev<f32>,
    (b, t, c): (usize, usize, usize),
    bf16: bool,
) -> Result<()> {
    let op = "encoder_forward";
    check_len(op, "out", out.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(wpe.len >= t * c && c > 0, "{op}: wpe too short or C = 0");
    check_index(op, tokens, wte.len / c);
    let tokens = Mem::from_host(e, tokens)?;
    let (bt, ti, ci) = (dim(op, "B·T", b * t), dim(op, "T", t), dim(op, "C", c));
    // SAFETY: checked: out B·T·C, tokens B·T (staged; freed in stream order, after the kernel), wpe ≥ T·C,
    // tokens < wte.len / C (check_index). Threads i < B·T·C (guard) read tokens[i / C],
    // wte[tok·C + ch] < wte.len, wpe[(row % T)·C + ch] < T·C, write out[i]; the generated launcher passes the
    // kernel's own arguments.
    unsafe {
        launch::encoder_forward(
            e,
            flat(out.len),
            out,
            tokens.dev(),
            wte,
            wpe,
            bt,
            ti,
            ci,
            bf16 as i32,
        )
    }
}

/// dwte[tokens] += dout, dwpe[t] += Σ_b dout (the CPU backend's addition order).
pub fn encoder_backward<E: Exec>(
    e: &E,
    dwte: DevMut<f32>,
    dwpe: DevMut<f32>,
    dout: Dev<f32>,
    tokens: &[u32],
    (b, t, c): (usize, usize, usize),
) -> Result<()> {
    let op = "encoder_backward";
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(dwpe.len >= t * c && c > 0, "{op}: dwpe too short or C = 0");
    check_index(op, tokens, dwte.len / c);
    let (bi, ti, ci) = (dim(op, "B", b), dim(op, "T", t), dim(op, "C", c));
    // SAFETY: dwpe.slice(0..T·C) is in bounds (dwpe.len ≥ T·C asserted) and dout holds B·T·C (check_len);
    // threads i < T·C (the guard) update dwpe[i] and read dout[(b·T + t)·C + ch] < B·T·C for b < B; the
    // generated launcher passes encoder_backward_wpe's own argument list.
    unsafe {
        launch::encoder_backward_wpe(e, flat(t * c), dwpe.slice(0..t * c), dout, bi, ti, ci)?;
    }
    if tokens.is_empty() {
        return Ok(());
    }
    // Runs of equal tokens over positions sorted by (token, position).
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    order.sort_by_key(|&i| (tokens[i as usize], i));
    let mut runs = vec![0u32];
    for j in 1..order.len() {
        if tokens[order[j] as usize] != tokens[order[j - 1] as usize] {
            runs.push(j as u32);
        }
    }
    runs.push(order.len() as u32);
    let nruns = runs.len() - 1;
    let nruns_i = dim(op, "runs", nruns);
    let (tokens, order, runs) = (
        Mem::from_host(e, tokens)?,
        Mem::from_host(e, &order)?,
        Mem::from_host(e, &runs)?,
    );
    // SAFETY: staged, B·T u32 each: tokens (each < dwte.len / C, check_index) and order (a permutation of
    // 0..B·T); runs: nruns + 1 strictly rising entries from 0 to B·T. Thread (r < nruns, ch < C) reads
    // runs[r], runs[r + 1], order[lo..hi], tokens[order[lo]] and dout[order[j]·C + ch] < B·T·C and updates
    // dwte[tok·C + ch] < dwte.len: all inside (nruns ≤ B·T fits an int: `dim`); the generated launcher
    // passes encoder_backward_wte's own argument list.
    unsafe {
        launch::encoder_backward_wte(
            e,
            flat(nruns * c),
            dwte,
            dout,
            tokens.dev(),
            order.dev(),
            runs.dev(),
            nruns_i,
            ci,
        )
    }
}

/// LayerNorm forward: out, mean, rstd (kernels/layernorm.cu).
pub fn layernorm_forward<E: Exec>(
    e: &E,
    [out, mean, rstd]: [DevMut<f32>; 3],
    inp: Dev<f32>,
    weight: Dev<f32>,
    bias: Option<Dev<f32>>,
    (n, c): (usize, usize),
    bf16: bool,
) -> Result<()> {
    let op = "layernorm_forward";
    check_len(op, "out", out.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    check_len(op, "weight", weight.len, c);
    if let Some(bb) = bias {
        check_len(op, "bias", bb.len, c);
    }
    let (ni, ci) = (dim(op, "N", n), dim(op, "C", c));
    // SAFETY: check_len: out, inp N·C; mean, rstd N; weight, bias (if any) C. warp_rows(N): one warp per row,
    // rows ≥ N return, so row < N touches inp/out[row·C + i], weight/bias[i] (i < C), mean/rstd[row]; a null
    // bias is tested before use. The generated launcher passes the kernel's own arguments.
    unsafe {
        launch::layernorm_forward(
            e,
            warp_rows(n),
            out,
            mean,
            rstd,
            inp,
            weight,
            bias.unwrap_or(Dev::NULL),
            ni,
            ci,
            bf16 as i32,
        )
    }
}

/// LayerNorm backward: dinp, then dweight and dbias (kernels/layernorm.cu).
pub fn layernorm_backward<E: Exec>(
    e: &E,
    (dinp, dweight, dbias): (DevMut<f32>, DevMut<f32>, Option<DevMut<f32>>),
    dout: Dev<f32>,
    [inp, weight, mean, rstd]: [Dev<f32>; 4],
    (n, c): (usize, usize),
) -> Result<()> {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len, n * c);
    check_len(op, "dout", dout.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "dweight", dweight.len, c);
    check_len(op, "weight", weight.len, c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    if let Some(db) = dbias {
        check_len(op, "dbias", db.len, c);
    }
    let (ni, ci) = (dim(op, "N", n), dim(op, "C", c));
    // SAFETY: check_len: dinp, dout, inp N·C; weight, dweight, dbias (if any) C; mean, rstd N. dinp: a warp
    // per row < N (warp_rows(N)) at row·C + i, i < C; dweight: thread ch < C (guarded) reads [row·C + ch],
    // row < N, updates dweight/dbias[ch] (null dbias tested). The generated launchers pass each kernel's own
    // arguments.
    unsafe {
        launch::layernorm_backward_dinp(
            e,
            warp_rows(n),
            dinp,
            dout,
            inp,
            weight,
            mean,
            rstd,
            ni,
            ci,
        )?;
        launch::layernorm_backward_dweight(
            e,
            flat(c),
            dweight,
            dbias.unwrap_or(DevMut::NULL),
            dout,
            inp,
            mean,
            rstd,
            ni,
            ci,
        )
    }
}

#[track_caller]
fn check_attention(
    op: &str,
    att: usize,
    qkv: Dev<f32>,
    (b, t, c, nh): (usize, usize, usize, usize),
) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{op}: C = {c} is not a multiple of NH = {nh}"
    );
    check_len(op, "att", att, b * nh * t * t);
    check_len(op, "qkv", qkv.len, b * t * 3 * c);
}

/// Attention forward: softmax rows, then att·v (kernels/attention.cu).
pub fn attention_forward<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    att: DevMut<f32>,
    qkv: Dev<f32>,
    shape: (usize, usize, usize, usize),
    bf16: bool,
) -> Result<()> {
    let op = "attention_forward";
    let (b, t, c, nh) = shape;
    check_attention(op, att.len, qkv, shape);
    check_len(op, "out", out.len, b * t * c);
    dim(op, "3·C", 3 * c); // the kernels form 3C as an int
    let (bi, ti, ci, nhi) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
    );
    // SAFETY: checked: NH > 0 divides C, att B·NH·T·T, qkv B·T·3C, out B·T·C. Softmax: one warp per
    // row < B·NH·T (warp_rows) writes att[row·T + t2], t2 < T, and reads q and k of its (b, h) in qkv; value:
    // thread i < B·T·C (flat, guarded) reads its att row and v column and writes out[i]. The kernels form
    // 3C as an int, which `dim` checked to fit. The generated launchers pass each kernel's own argument list.
    unsafe {
        launch::attention_softmax_forward(e, warp_rows(b * nh * t), att, qkv, bi, ti, ci, nhi)?;
        launch::attention_value_forward(
            e,
            flat(b * t * c),
            out,
            att.read(),
            qkv,
            bi,
            ti,
            ci,
            nhi,
            bf16 as i32,
        )
    }
}

/// Attention backward: d(preatt) into scratch, then dq, dk, dv (kernels/attention.cu).
pub fn attention_backward<E: Exec>(
    e: &E,
    dqkv: DevMut<f32>,
    scratch: DevMut<f32>,
    [dout, qkv, att]: [Dev<f32>; 3],
    shape: (usize, usize, usize, usize),
) -> Result<()> {
    let op = "attention_backward";
    let (b, t, c, nh) = shape;
    check_attention(op, att.len, qkv, shape);
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "scratch", scratch.len, b * nh * t * t);
    check_len(op, "dqkv", dqkv.len, b * t * 3 * c);
    dim(op, "3·C", 3 * c); // the kernels form 3C as an int
    let (bi, ti, ci, nhi) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
    );
    // SAFETY: checked: NH > 0 divides C; att, scratch B·NH·T·T; qkv, dqkv B·T·3C; dout B·T·C. datt: one warp
    // per row < B·NH·T writes scratch[row·T + t2], t2 < T; dqkv: thread i < B·T·C reads scratch and att below
    // B·NH·T·T and qkv and dout of its b, and updates dqkv[(b·T + t)·3C + ch + {0, C, 2C}]; 3C, an int in the kernels, fits (`dim`). The generated
    // launchers pass each kernel's own argument list.
    unsafe {
        launch::attention_backward_datt(
            e,
            warp_rows(b * nh * t),
            scratch,
            dout,
            qkv,
            att,
            bi,
            ti,
            ci,
            nhi,
        )?;
        launch::attention_backward_dqkv(
            e,
            flat(b * t * c),
            dqkv,
            scratch.read(),
            dout,
            qkv,
            att,
            bi,
            ti,
            ci,
            nhi,
        )
    }
}

/// GELU forward (`=`, bf16-rounded when `bf16`).
pub fn gelu_forward<E: Exec>(e: &E, out: DevMut<f32>, inp: Dev<f32>, bf16: bool) -> Result<()> {
    same_len("gelu_forward", out.len, &[("inp", inp.len)]);
    // SAFETY: same_len: inp has out.len elements; threads i < n = out.len (the guard) read inp[i] and write
    // out[i]; the generated launcher passes gelu_forward's own argument list.
    unsafe { launch::gelu_forward(e, flat(out.len), out, inp, out.len as i64, bf16 as i32) }
}

/// GELU backward (`+=`).
pub fn gelu_backward<E: Exec>(
    e: &E,
    dinp: DevMut<f32>,
    inp: Dev<f32>,
    dout: Dev<f32>,
) -> Result<()> {
    same_len(
        "gelu_backward",
        dinp.len,
        &[("inp", inp.len), ("dout", dout.len)],
    );
    // SAFETY: same_len: inp and dout have dinp.len elements; threads i < n = dinp.len (the guard) read inp[i]
    // and dout[i] and update dinp[i]; the generated launcher passes gelu_backward's own argument list.
    unsafe { launch::gelu_backward(e, flat(dinp.len), dinp, inp, dout, dinp.len as i64) }
}

/// out = a + b
pub fn residual_forward<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    a: Dev<f32>,
    b: Dev<f32>,
    bf16: bool,
) -> Result<()> {
    same_len("residual_forward", out.len, &[("a", a.len), ("b", b.len)]);
    let n = out.len as i64;
    // SAFETY: same_len: a and b have out.len elements; threads i < n = out.len (the guard) read a[i], b[i]
    // and write out[i]; the generated launcher passes residual_forward's own argument list.
    unsafe { launch::residual_forward(e, flat(out.len), out, a, b, n, bf16 as i32) }
}

/// dx += dout
pub fn add_inplace<E: Exec>(e: &E, dx: DevMut<f32>, dout: Dev<f32>) -> Result<()> {
    same_len("add_inplace", dx.len, &[("dout", dout.len)]);
    // SAFETY: same_len: dout has dx.len elements; threads i < n = dx.len (the guard) update dx[i] from
    // dout[i]; the generated launcher passes add_inplace's own argument list.
    unsafe { launch::add_inplace(e, flat(dx.len), dx, dout, dx.len as i64) }
}

/// out = bf16(inp), widened (in place when `out` and `inp` are one tensor).
pub fn round_bf16_copy<E: Exec>(e: &E, out: DevMut<f32>, inp: Dev<f32>) -> Result<()> {
    same_len("round_bf16_copy", out.len, &[("inp", inp.len)]);
    // SAFETY: same_len: inp has out.len elements; threads i < n = out.len (the guard) read inp[i], then write
    // out[i] (the same element in place); the generated launcher passes round_bf16_copy's own arguments.
    unsafe { launch::round_bf16_copy(e, flat(out.len), out, inp, out.len as i64) }
}

/// out = bf16(inp), round-to-nearest-even, stored as bf16: the operands of the bf16 GEMMs.
pub fn to_bf16<E: Exec>(e: &E, out: DevMut<half::bf16>, inp: Dev<f32>) -> Result<()> {
    check_len("to_bf16", "out", out.len, inp.len);
    // SAFETY: check_len: out holds inp.len bf16; threads i < n = inp.len (the guard) read inp[i] and write
    // out[i]; the generated launcher passes to_bf16's own argument list (out as `__nv_bfloat16*`).
    unsafe { launch::to_bf16(e, flat(inp.len), out, inp, inp.len as i64) }
}

/// out (N,OC) += bias (OC) per row.
pub fn bias_forward<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    bias: Dev<f32>,
    n: usize,
    oc: usize,
) -> Result<()> {
    check_len("bias_forward", "out", out.len, n * oc);
    check_len("bias_forward", "bias", bias.len, oc);
    let oci = dim("bias_forward", "OC", oc);
    // SAFETY: check_len: out N·OC, bias OC; threads i < N·OC (the guard) update out[i] from bias[i % OC]; the
    // generated launcher passes bias_forward's own argument list.
    unsafe { launch::bias_forward(e, flat(n * oc), out, bias, n as i64, oci) }
}

/// dbias (OC) += Σ_rows dout (N,OC), each dout rounded to bf16 first when `bf16`.
pub fn bias_backward<E: Exec>(
    e: &E,
    dbias: DevMut<f32>,
    dout: Dev<f32>,
    n: usize,
    oc: usize,
    bf16: bool,
) -> Result<()> {
    check_len("bias_backward", "dout", dout.len, n * oc);
    check_len("bias_backward", "dbias", dbias.len, oc);
    let oci = dim("bias_backward", "OC", oc);
    // SAFETY: check_len: dout N·OC, dbias OC; thread j < OC (flat(OC), guarded) reads dout[r·OC + j] for
    // r < N and updates dbias[j]; the generated launcher passes bias_backward's own argument list.
    unsafe { launch::bias_backward(e, flat(oc), dbias, dout, n as i64, oci, bf16 as i32) }
}

/// Fused softmax + cross-entropy (+ gradient in place when `dloss`).
pub fn crossentropy_forward<E: Exec>(
    e: &E,
    losses: DevMut<f32>,
    logits: DevMut<f32>,
    targets: &[u32],
    dloss: Option<f32>,
    (n, v): (usize, usize),
) -> Result<()> {
    let op = "crossentropy_forward";
    check_len(op, "losses", losses.len, n);
    check_len(op, "logits", logits.len, n * v);
    check_len(op, "targets", targets.len(), n);
    check_index(op, targets, v);
    if n == 0 {
        return Ok(());
    }
    let targets = Mem::from_host(e, targets)?;
    let (ni, vi) = (dim(op, "N", n), dim(op, "V", v));
    // SAFETY: check_len: losses N, logits N·V, targets N (staged; freed in stream order, after the kernel);
    // check_index: targets < V. Block row < N (grid N, guarded) rewrites logits[row·V + j], j < V, reads
    // targets[row], logits[row·V + target], writes losses[row]; the launcher passes the kernel's own
    // arguments.
    unsafe {
        launch::crossentropy_forward(
            e,
            Geometry::blocks(n, BLOCK),
            losses,
            logits,
            targets.dev(),
            dloss.unwrap_or(0.0),
            dloss.is_some() as i32,
            ni,
            vi,
        )
    }
}
