// SyncBatchNorm2d over NCCL (library bn2d::nccl): CUDA tensors, statistics exchanged in device
// memory.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>

#include "bn2d/sync_batchnorm2d.h"

namespace bn2d {

// The ranks of `comm` (the application's; not owned), with NCCL's collectives enqueued on
// `stream` and waited for before each returns. The module must be on Device::Cuda, on the
// device and context `comm` was created on (use_cuda_context() shares the application's
// context with the kernels). Control messages (256 bytes per rank per step) pass through a
// small device buffer of the communicator's own.
std::shared_ptr<Communicator> nccl_communicator(ncclComm_t comm, cudaStream_t stream);

}  // namespace bn2d
