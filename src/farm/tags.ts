/**
 * A build job's stage tags, core first, computed the way the builder will compute them
 * (the builder's own stage planning, this host's tools and package sources) without building
 * anything: what the scheduler matches against the workers' stage caches.
 */
import { plannedStages } from '../builder/index.js';
import type { BuildSpec } from '../spec/index.js';

/**
 * The spec's stage tags, or none when this host cannot plan them (its bootstrap tool is
 * missing): the job then goes to any worker, which plans with its own tools.
 */
export async function stageTagsOf(spec: BuildSpec): Promise<string[]> {
  try {
    return (await plannedStages(spec)).map((p) => p.tag);
  } catch {
    return [];
  }
}
