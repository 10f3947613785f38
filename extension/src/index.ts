/** mlplat in JupyterLab: a sidebar (features, models, jobs) and Deploy and Schedule buttons on every notebook. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ToolbarButton } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import { deploy } from './deploy';
import { schedule } from './schedule';
import { MlplatSidebar } from './sidebar';

class NotebookButtons implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(private readonly changed: () => Promise<void>) {}

  createNew(panel: NotebookPanel): IDisposable {
    const buttons = {
      'mlplat-deploy': new ToolbarButton({
        className: 'mlplat-deploy', label: 'Deploy', tooltip: 'Deploy the model trained in this notebook (or another) to Triton',
        onClick: () => this.refreshAfter(deploy(panel))
      }),
      'mlplat-schedule': new ToolbarButton({
        className: 'mlplat-schedule', label: 'Schedule', tooltip: 'Run this notebook as a job on a cron schedule',
        onClick: () => this.refreshAfter(schedule(panel))
      })
    };
    Object.entries(buttons).forEach(([name, button], i) => panel.toolbar.insertItem(10 + i, name, button));
    return new DisposableDelegate(() => Object.values(buttons).forEach(button => button.dispose()));
  }

  /** Reload the sidebar once an action has changed something. */
  private refreshAfter(action: Promise<unknown>): void {
    void action.then(done => (done ? this.changed() : undefined));
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlplat-lab:plugin',
  description: 'mlplat: features, models and jobs in a sidebar; Deploy and Schedule buttons on notebooks.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const sidebar = new MlplatSidebar();
    app.shell.add(sidebar, 'left', { rank: 600 });
    app.docRegistry.addWidgetExtension('Notebook', new NotebookButtons(() => sidebar.refresh()));
  }
};

export default plugin;
