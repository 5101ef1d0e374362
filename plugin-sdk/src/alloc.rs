//! The plugin's memory allocator: size classes on top of the system allocator.
//!
//! The hub runs every call in a fresh instance and throws the instance away afterwards, so a
//! plugin's heap lives for one call. Parsing and serialising JSON makes many small, short-lived
//! allocations; general-purpose `malloc`/`free` (wasi-libc's dlmalloc) took a fifth of the
//! guest's time in the plugin benchmark. Here a small block (at most [`LARGEST`] bytes, aligned
//! to at most 16) comes from a free list per size class (multiples of 16 bytes), refilled by
//! carving chunks taken from the system allocator; freeing pushes it back onto its list. Larger
//! or over-aligned blocks go straight to the system allocator.
//!
//! Memory on a size class's free list is reused only by that class and never handed back, which
//! costs little for a heap that lives one call; keeping the classes small and fine keeps that
//! waste small (a 10,000-record Meta batch stays well inside the 64 MiB memory cap). A plugin that prefers its own allocator turns
//! off the SDK's default `size-class-alloc` feature and declares its own `#[global_allocator]`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use std::alloc::System;

/// Size classes are multiples of this: a block wastes less than this much of its size.
const STEP: usize = 16;
/// Number of size classes: 16, 32, 48, ..., 512 bytes.
const CLASSES: usize = 32;
/// Largest block served from a size class.
pub const LARGEST: usize = STEP * CLASSES;
/// Blocks are carved from chunks taken from the system allocator when needed: the first is
/// small, so that a call needing little memory does not grow the instance's linear memory (the
/// host pays for every grown page when it recycles the instance), and each next one is twice
/// the last, up to the largest.
const FIRST_CHUNK: usize = LARGEST;
const LARGEST_CHUNK: usize = 64 * 1024;
/// Alignment of every chunk, and so of every block (all class sizes are multiples of it).
const ALIGN: usize = 16;

struct State {
    /// Head of each class's free list; a free block's first word points at the next one.
    free: [*mut u8; CLASSES],
    /// Unused rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
    /// Size of the next chunk to take.
    chunk: usize,
}

/// A size-class allocator for single-threaded WebAssembly guests.
pub struct SizeClasses {
    state: UnsafeCell<State>,
}

// SAFETY: a plugin instance (wasm32-wasip2, no threads) runs on one thread; `SizeClasses` must not
// be used where threads share memory, which is why the SDK installs it only on wasm32 without the
// `atomics` target feature.
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    pub const fn new() -> Self {
        SizeClasses {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
                chunk: FIRST_CHUNK,
            }),
        }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class serving `layout`, or None when the system allocator must.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    // 0..=16 → 0, 17..=32 → 1, ..., 497..=512 → 31.
    Some(layout.size().saturating_sub(1) / STEP)
}

#[inline]
fn class_size(class: usize) -> usize {
    STEP * (class + 1)
}

impl State {
    #[inline]
    unsafe fn take(&mut self, class: usize) -> *mut u8 {
        let head = self.free[class];
        if !head.is_null() {
            // SAFETY: a block on a free list is at least a pointer long and holds the next link.
            self.free[class] = unsafe { *(head as *mut *mut u8) };
            return head;
        }
        unsafe { self.carve(class_size(class)) }
    }

    #[inline]
    unsafe fn give_back(&mut self, block: *mut u8, class: usize) {
        // SAFETY: the caller owned `block`, a block of this class (so at least 16 bytes, aligned).
        unsafe { *(block as *mut *mut u8) = self.free[class] };
        self.free[class] = block;
    }

    unsafe fn carve(&mut self, size: usize) -> *mut u8 {
        if (self.end as usize) - (self.next as usize) < size {
            let len = self.chunk;
            // SAFETY: `len` (a power of two times LARGEST) and ALIGN form a valid layout.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(len, ALIGN)) };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            // The old chunk's tail (under LARGEST bytes) is left unused.
            self.next = chunk;
            self.end = chunk.wrapping_add(len);
            self.chunk = (len * 2).min(LARGEST_CHUNK);
        }
        let block = self.next;
        self.next = block.wrapping_add(size);
        block
    }
}

unsafe impl GlobalAlloc for SizeClasses {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: single-threaded (see `Sync` above), and no allocator call re-enters another.
            Some(class) => unsafe { (*self.state.get()).take(class) },
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => unsafe { (*self.state.get()).give_back(block, class) },
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(_) => {
                let block = unsafe { self.alloc(layout) };
                if !block.is_null() {
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        let class = |size, align| class_of(Layout::from_size_align(size, align).unwrap());
        assert_eq!(class(0, 1), Some(0));
        assert_eq!(class(1, 1), Some(0));
        assert_eq!(class(16, 8), Some(0));
        assert_eq!(class(17, 1), Some(1));
        assert_eq!(class(32, 16), Some(1));
        assert_eq!(class(500, 4), Some(31));
        assert_eq!(class(LARGEST, 1), Some(31));
        assert_eq!(class(LARGEST + 1, 1), None);
        assert_eq!(class(8, 32), None);
        for size in 1..=LARGEST {
            let c = class(size, 1).unwrap();
            assert!(class_size(c) >= size && (c == 0 || class_size(c - 1) < size));
        }
    }

    #[test]
    fn blocks_are_aligned_distinct_reused_and_keep_their_bytes_when_resized() {
        let heap = SizeClasses::new();
        unsafe {
            let layout = |size, align| Layout::from_size_align(size, align).unwrap();
            let mut blocks = Vec::new();
            for size in [1usize, 15, 16, 17, 100, 500, 2048, 3000] {
                for align in [1usize, 8, 16] {
                    let block = heap.alloc(layout(size, align));
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0);
                    ptr::write_bytes(block, size as u8, size);
                    blocks.push((block, size, align));
                }
            }
            // No two live blocks overlap: each still holds its own fill.
            for &(block, size, _) in &blocks {
                assert!((0..size).all(|i| *block.add(i) == size as u8));
            }
            // A freed block is handed out again for its class.
            let (first, size, align) = blocks[3];
            heap.dealloc(first, layout(size, align));
            assert_eq!(heap.alloc(layout(size, align)), first);

            // Growing across classes and into the system allocator keeps the contents.
            let mut block = heap.alloc(layout(10, 1));
            ptr::copy_nonoverlapping(b"0123456789".as_ptr(), block, 10);
            let mut size = 10;
            for new_size in [16, 40, 1000, 5000, 100_000, 30, 10] {
                block = heap.realloc(block, layout(size, 1), new_size);
                assert!(!block.is_null());
                let kept = std::slice::from_raw_parts(block, 10.min(new_size));
                assert_eq!(kept, &b"0123456789"[..kept.len()]);
                size = new_size;
            }
            heap.dealloc(block, layout(size, 1));

            let zeroed = heap.alloc_zeroed(layout(64, 8));
            assert!((0..64).all(|i| *zeroed.add(i) == 0));
        }
    }
}
