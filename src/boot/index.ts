/** Booting images under qemu: `boot()` and its VM handle. docs/boot.md describes it. */
export { boot, type BootInfo, type BootOptions, VmHandle, type WaitResult } from './boot.js';
export { cleanLine } from './console.js';
export { type DiskFormat, type DiskSource, sniffFile } from './disk.js';
export { ACCELS, type Accel, type BootMode, FIRMWARES, type Firmware, parseAccel, parseFirmware } from './machine.js';
export { describeExit, type QemuExit } from './qemu.js';
export type { ExecResult } from './ssh.js';
