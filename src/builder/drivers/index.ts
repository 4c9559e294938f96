import { familyOf } from '../../spec/distros.js';
import { buildFailed } from '../errors.js';
import { haveTool } from '../../host/process.js';
import type { BuildSpec } from '../../spec/spec.js';
import { DebootstrapDriver, MmdebstrapDriver } from './debian.js';
import { RpmDriver } from './rpm.js';
import type { Driver } from './types.js';

export type { Driver, DriverContext, Phase } from './types.js';

/** The driver for a spec: its `backend`, or for `auto` the preferred tool that is installed. */
export async function selectDriver(spec: BuildSpec): Promise<Driver> {
  if (familyOf(spec.distribution) === 'deb') {
    if (spec.backend === 'debootstrap' || (spec.backend === 'auto' && !(await haveTool('mmdebstrap')))) {
      DebootstrapDriver.check(spec);
      if (!(await haveTool('debootstrap'))) throw buildFailed('neither mmdebstrap nor debootstrap is installed');
      return new DebootstrapDriver();
    }
    if (!(await haveTool('mmdebstrap'))) throw buildFailed('mmdebstrap is not installed (apt-get install mmdebstrap, or set backend: debootstrap)');
    return new MmdebstrapDriver();
  }
  // dnf where it exists (it can also install yum-era releases' repositories); yum otherwise.
  for (const tool of spec.backend === 'auto' ? (['dnf', 'yum'] as const) : [spec.backend as 'dnf' | 'yum']) {
    if (await haveTool(tool)) {
      const driver = new RpmDriver(tool);
      driver.check(spec);
      return driver;
    }
  }
  throw buildFailed(`${spec.backend === 'auto' ? 'neither dnf nor yum' : spec.backend} is installed (apt-get install dnf rpm)`);
}
