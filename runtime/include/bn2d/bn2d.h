// Umbrella header of the bn2d library.
#pragma once

#include "bn2d/batchnorm2d.h"
#include "bn2d/checkpoint.h"
#include "bn2d/deploy.h"
#include "bn2d/device.h"
#include "bn2d/errors.h"
#include "bn2d/functional.h"
#include "bn2d/settings.h"
#include "bn2d/sync_batchnorm2d.h"
#include "bn2d/tensor.h"
