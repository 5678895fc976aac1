// What the C++ files of kestrel's c10d shim share (not part of the C ABI): the handle
// types behind c10d_shim.h's opaque structs; the error convention is shim_util.hpp's.
#pragma once
#include "shim_util.hpp"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

struct kd_store { c10::intrusive_ptr<c10d::Store> store; };
struct kd_pg { c10::intrusive_ptr<c10d::Backend> pg; };
struct kd_work { c10::intrusive_ptr<c10d::Work> work; };

