// SyncBatchNorm2d over MPI (library bn2d::mpi): CPU tensors, or device tensors staged through
// the host.
#pragma once

#include <mpi.h>

#include <memory>

#include "bn2d/sync_batchnorm2d.h"

namespace bn2d {

// The processes of `comm`, for SyncBatchNorm2d. MPI must be initialized and stay so while the
// communicator lives. `comm` is duplicated: the module's collectives never match the
// application's own messages, and errors on the duplicate are returned to us (MPI_ERRORS_RETURN)
// and thrown as bn2d::Error instead of aborting the job.
std::shared_ptr<Communicator> mpi_communicator(MPI_Comm comm);

}  // namespace bn2d
