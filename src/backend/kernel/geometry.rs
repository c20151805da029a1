//! Launch geometry: the grid, block and dynamic shared memory of one launch, and the shapes the kernel
//! files document (`kernels/*.cu`, each file's header comment).

/// Threads per block of the elementwise and per-row kernels (the kernels' `__launch_bounds__(256)`).
pub const BLOCK: u32 = 256;
/// Elements per block of `reduce.cu: sum_squares_partial` (`REDUCE_CHUNK`).
pub const REDUCE_CHUNK: usize = 65536;
/// Output tile of `block_gemm.cuh` (rows × columns).
pub const GEMM_TILE: usize = 64;

/// Grid and block sizes (x, y, z) and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u64,
}

impl Geometry {
    /// A 1-D grid of `ceil(n / block)` blocks of `block` threads (at least one block).
    pub fn linear(n: usize, block: u32) -> Self {
        Geometry {
            grid: [grid_dim(n.div_ceil(block as usize).max(1)), 1, 1],
            block: [block, 1, 1],
            smem: 0,
        }
    }
    /// `blocks` blocks of `block` threads.
    pub fn blocks(blocks: usize, block: u32) -> Self {
        Geometry {
            grid: [grid_dim(blocks.max(1)), 1, 1],
            block: [block, 1, 1],
            smem: 0,
        }
    }
}

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        write!(f, "grid {gx}×{gy}×{gz}, block {bx}×{by}×{bz}")?;
        if self.smem > 0 {
            write!(f, ", {} B dynamic shared memory", self.smem)?;
        }
        Ok(())
    }
}

/// A grid dimension as u32 (CUDA's limit for x is 2³¹ − 1).
fn grid_dim(n: usize) -> u32 {
    assert!(n < (1 << 31), "grid of {n} blocks exceeds CUDA's 2^31 - 1");
    n as u32
}

/// A flat elementwise launch: one thread per element, 256-thread blocks.
pub fn flat(n: usize) -> Geometry {
    Geometry::linear(n, BLOCK)
}

/// One warp per row, 8 rows per 256-thread block.
pub fn warp_rows(rows: usize) -> Geometry {
    Geometry::blocks(rows.div_ceil((BLOCK / 32) as usize), BLOCK)
}

/// The block-rotation GEMM grid of `block_gemm.cuh`: tiles of blocks on x (up to 2^31 − 1), tiles of
/// coordinates on y (up to 65,535 of 64: n < 4.2M).
pub fn gemm_grid(nb: usize, n: usize) -> Geometry {
    Geometry {
        grid: [
            grid_dim(nb.div_ceil(GEMM_TILE).max(1)),
            {
                let y = n.div_ceil(GEMM_TILE).max(1);
                assert!(
                    y <= 65_535,
                    "rotation block n = {n} exceeds the grid's y limit"
                );
                y as u32
            },
            1,
        ],
        block: [BLOCK, 1, 1],
        smem: 0,
    }
}
