import { familyOf } from '../distros.js';
import { buildFailed } from '../errors.js';
import { haveTool } from '../exec.js';
import type { BuildSpec } from '../spec.js';
import { DebootstrapDriver, MmdebstrapDriver } from './debian.js';
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
  throw buildFailed(`${spec.distribution}: the RPM driver is not available yet`);
}
