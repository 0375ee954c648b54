/* Byte grouping ("byte shuffle") for float tensors: byte j of every k-byte
 * element goes to plane j, so the sign/exponent bytes of floats form runs
 * zstd can model.  n is the byte count; a tail shorter than one element is
 * copied as is after the planes. */
#pragma once
#include <stddef.h>
#include <stdint.h>

void bytegroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k);
void byteungroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k);
