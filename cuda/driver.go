package cuda

import (
	"os"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// driver holds the CUDA driver API entry points the backend uses (the _v2 ABI where one
// exists). Every call returns a CUresult; check turns a non-zero one into an error.
type driver struct {
	lib, path string

	init, driverGetVersion, deviceGet, deviceGetCount, deviceGetName, deviceGetAttribute uintptr
	primaryCtxRetain, ctxSetCurrent, ctxSynchronize                                      uintptr
	streamCreate, streamSynchronize                                                      uintptr
	memAlloc, memFree, memGetInfo                                                        uintptr
	memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync, memsetD32Async                    uintptr
	moduleLoadData, moduleGetFunction, launchKernel                                      uintptr
	eventCreate, eventRecord, eventSynchronize, eventElapsedTime                         uintptr
	getErrorName, getErrorString                                                         uintptr
	graphAPI                                                                             // optional: CUDA graphs and pinned memory (graph.go)
}

// noDevice marks an error of Open as "there is no GPU here" (engine.ErrNoDevice): --device
// auto then falls back to the CPU without reporting it, while --device cuda shows it whole.
type noDevice struct{ error }

func (e noDevice) Is(target error) bool { return target == engine.ErrNoDevice }
func (e noDevice) Unwrap() error        { return e.error }

// cudaErrorNoDevice is CUDA_ERROR_NO_DEVICE, cuInit's answer where the driver sees no GPU.
const cudaErrorNoDevice = 100

func loadDriver() (*driver, error) {
	h, path, err := specDriver.open()
	if err != nil {
		if os.Getenv(specDriver.env) == "" { // the search found no driver: no GPU here
			return nil, noDevice{err}
		}
		return nil, err // the driver the user named did not load: that is a real error
	}
	d := &driver{path: path}
	err = symbols(h, path, map[string]*uintptr{
		"cuInit": &d.init, "cuDriverGetVersion": &d.driverGetVersion, "cuDeviceGet": &d.deviceGet,
		"cuDeviceGetCount": &d.deviceGetCount, "cuDeviceGetName": &d.deviceGetName,
		"cuDeviceGetAttribute": &d.deviceGetAttribute, "cuDevicePrimaryCtxRetain": &d.primaryCtxRetain,
		"cuCtxSetCurrent": &d.ctxSetCurrent, "cuCtxSynchronize": &d.ctxSynchronize,
		"cuStreamCreate": &d.streamCreate, "cuStreamSynchronize": &d.streamSynchronize,
		"cuMemAlloc_v2": &d.memAlloc, "cuMemFree_v2": &d.memFree, "cuMemGetInfo_v2": &d.memGetInfo,
		"cuMemcpyHtoDAsync_v2": &d.memcpyHtoDAsync, "cuMemcpyDtoHAsync_v2": &d.memcpyDtoHAsync,
		"cuMemcpyDtoDAsync_v2": &d.memcpyDtoDAsync, "cuMemsetD32Async": &d.memsetD32Async,
		"cuModuleLoadData": &d.moduleLoadData, "cuModuleGetFunction": &d.moduleGetFunction,
		"cuLaunchKernel": &d.launchKernel, "cuEventCreate": &d.eventCreate, "cuEventRecord": &d.eventRecord,
		"cuEventSynchronize": &d.eventSynchronize, "cuEventElapsedTime": &d.eventElapsedTime,
		"cuGetErrorName": &d.getErrorName, "cuGetErrorString": &d.getErrorString,
	})
	if err != nil {
		return nil, err
	}
	d.graphAPI = loadGraphAPI(h)
	return d, nil
}

// check turns a CUresult into an *Error naming the call: the name and description from
// cuGetErrorName and cuGetErrorString, the header's name where the driver does not know it.
func (d *driver) check(what string, r int) error {
	if r == 0 {
		return nil
	}
	var name, desc uintptr
	e := &Error{Call: what, Lib: libDriver, Code: r, Fatal: driverFatal[r]}
	if call(d.getErrorName, uintptr(r), uintptr(unsafe.Pointer(&name))) == 0 {
		e.Name = gostr(name)
	}
	if call(d.getErrorString, uintptr(r), uintptr(unsafe.Pointer(&desc))) == 0 {
		e.Desc = gostr(desc)
	}
	if e.Name == "" {
		e.Name = statusName(driverErrorNames, libDriver, r)
	}
	return e
}

// Device attributes (CUdevice_attribute).
const (
	attrMultiprocessorCount    = 16
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
)

func (d *driver) attribute(dev, attr int) (int, error) {
	var v int32
	err := d.check("cuDeviceGetAttribute", call(d.deviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(dev)))
	return int(v), err
}
