/** The mlplat server extension's REST API (`/mlplat/api/...`) and what it answers. */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IField {
  name: string;
  dtype: string;
  description: string;
}

export interface IFeatureView {
  name: string;
  version: number;
  owner: string;
  description: string;
  schema: IField[];
  entities: { name: string; join_keys: string[] }[];
  ttl: number | null;
}

export interface IFreshness {
  latest_event: string | null;
  last_ingest: string | null;
  materialized_until: string | null;
  unmaterialized_files: number;
}

export interface IModel {
  name: string;
  latest: number | null;
  aliases: Record<string, string>;
}

export interface IModelVersion {
  name: string;
  version: string;
  aliases: string[];
  metrics: Record<string, number | null>;
  archived: boolean;
}

export interface ILineageNode {
  kind: string;
  label: string;
  details: Record<string, unknown>;
  children: ILineageNode[];
}

export interface ILineage {
  root: ILineageNode;
}

export interface ISchedule {
  id: number;
  notebook: string;
  cron: string;
  parameters: Record<string, unknown>;
  enabled: boolean;
  next_run: string | null;
  last_status: string | null;
  broken: string | null;
  last_error: string | null;
}

export interface IJobRun {
  id: string;
  notebook: string;
  status: string;
  seconds: number;
  error: string | null;
}

export interface IDeployment {
  name: string;
  version: string;
  endpoint: string;
  triton_model: string;
  status: string;
  features: string[];
  snippet: string;
}

/**
 * GET (or, with `body`, POST; or `method`) `/mlplat/api/<path>`; a refused request throws an Error with the
 * server's message.
 */
export async function requestAPI<T>(path: string, body?: unknown, method?: string): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const init: RequestInit = body === undefined ? { method } : { method: method ?? 'POST', body: JSON.stringify(body) };
  const response = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'mlplat/api', path), init, settings);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.message ?? `${response.status} ${response.statusText}`);
  }
  return data as T;
}
