/**
 * A build job's stage tags, core first, computed the way the builder will compute them
 * (the same stage planning, this host's tools and package sources) without building
 * anything: what the scheduler matches against the workers' stage caches.
 */
import { resolveEpoch } from '../build/builder.js';
import { selectDriver } from '../build/drivers/index.js';
import type { BuildSpec } from '../build/spec.js';
import { stagePlans } from '../stages/run.js';
import { VERSION } from '../version.js';

/**
 * The spec's stage tags, or none when this host cannot plan them (its bootstrap tool is
 * missing): the job then goes to any worker, which plans with its own tools.
 */
export async function stageTagsOf(spec: BuildSpec): Promise<string[]> {
  try {
    const driver = await selectDriver(spec);
    return (await stagePlans(spec, driver, VERSION, resolveEpoch(spec, {}))).map((p) => p.tag);
  } catch {
    return [];
  }
}
